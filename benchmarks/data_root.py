"""A simulated data root copied for one benchmark reduction (shared by the benchmarks)."""
import os
import shutil
from pathlib import Path


def link_copy(source: Path, target: Path) -> Path:
    """Copy the data root ``source`` to ``target`` with hard links (raw frames are read-only, so links suffice)
    and point the copy's ``Config/rc.dic`` at ``target``; returns that rc.dic.

    The rc.dic is replaced by a file of its own: written through its hard link it would also change the
    source's, and the next copy would then reduce in the first one's folder."""
    shutil.copytree(source, target, copy_function=os.link)
    rc = Path(target) / "Config" / "rc.dic"
    text = rc.read_text().replace(str(source), str(target))
    rc.unlink()
    rc.write_text(text)
    return rc

#!/usr/bin/env python3
"""A stand-in for esorex, for the engine's edge cases (no MUSE recipe runs).

It parses the command line like esorex (``--output-dir``, ``--log-dir``, ``--log-file``, recipe, recipe
options, SOF), writes a log, and writes the products the real recipe would name (muse_bias, muse_flat,
muse_twilight), honouring ``--nifu`` and ``--merge``. Its behaviour is chosen by environment variables:

- ``FAKE_ESOREX_BEHAVIOUR``: ``ok`` (default), ``fail`` (exit 255 with an ``[ERROR]`` line), ``noproduct``
  (exit 0, writes nothing), ``hang`` (sleeps until killed);
- ``FAKE_ESOREX_FAIL_IFU``: only the run with ``--nifu=<this>`` fails;
- ``FAKE_ESOREX_RECORD``: a file to which each run appends its OMP_NUM_THREADS and argv;
- ``FAKE_ESOREX_STAMP``: a text written into every product (a re-run that makes different products).
"""
import os
import sys
import time
from pathlib import Path

PRODUCTS = {
    "muse_bias": (("MASTER_BIAS", True),),
    "muse_flat": (("MASTER_FLAT", True), ("TRACE_TABLE", True)),
    "muse_twilight": (("DATACUBE_SKYFLAT", False), ("TWILIGHT_CUBE", False)),
}


def main(argv):
    options, recipe_options, recipe, sof = {}, {}, None, None
    for item in argv:
        if item.startswith("--"):
            name, _, value = item[2:].partition("=")
            (recipe_options if recipe else options)[name] = value
        elif recipe is None:
            recipe = item
        else:
            sof = item
    output_dir = Path(options.get("output-dir", "."))
    log_path = Path(options.get("log-dir", ".")) / options.get("log-file", "esorex.log")
    if not output_dir.is_dir():
        print(f"[ERROR] esorex: Directory {output_dir} is not a valid directory")
        return 255
    record = os.environ.get("FAKE_ESOREX_RECORD")
    if record:
        with open(record, "a") as stream:
            stream.write(f"{os.environ.get('OMP_NUM_THREADS')} {' '.join(argv)}\n")
    inputs = Path(sof).read_text().splitlines() if sof else []
    behaviour = os.environ.get("FAKE_ESOREX_BEHAVIOUR", "ok")
    nifu = int(recipe_options.get("nifu", "0"))
    if os.environ.get("FAKE_ESOREX_FAIL_IFU") == str(nifu):
        behaviour = "fail"
    with log_path.open("w") as log:
        log.write(f"[ INFO  ] esorex: fake esorex running {recipe} on {len(inputs)} input(s)\n")
        if behaviour == "fail":
            log.write(f"[ ERROR ] {recipe}: simulated failure\n")
            print("simulated failure")
            return 255
        if behaviour == "hang":
            log.flush()
            time.sleep(3600)
        if behaviour == "noproduct":
            log.write(f"[ INFO  ] {recipe}: wrote nothing\n")
            return 0
        merged = recipe_options.get("merge", "false").lower() == "true"
        for tag, per_ifu in PRODUCTS.get(recipe, ()):
            ifu_suffix = f"-{nifu:02d}" if per_ifu and not merged and nifu > 0 else ""
            stamp = os.environ.get("FAKE_ESOREX_STAMP", "")
            (output_dir / f"{tag}{ifu_suffix}.fits").write_text(f"{tag} from {' '.join(inputs)}\n{stamp}")
            log.write(f"[ INFO  ] {recipe}: saved {tag}{ifu_suffix}.fits\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

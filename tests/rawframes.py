"""Small MUSE-like raw files for scanner tests: real FITS with realistic primary headers, tiny data."""
import gzip
import shutil

import numpy as np
from astropy.io import fits
from astropy.time import Time

LAMP_NAMES = ("CU-LAMP1", "CU-LAMP2", "CU-LAMP3", "CU-LAMP4", "CU-LAMP5", "CU-LAMP6")


def primary_header(catg, dpr_type, *, tech="IFU", mode="WFM-NOAO-N", mjd=60750.1, tpl_start=None, nexp=1,
                   expno=1, lamps_on=(), obj=None, instrume="MUSE", pro_catg=None, nfiller=0):
    header = fits.Header()
    header["INSTRUME"] = instrume
    header["OBJECT"] = obj or dpr_type
    date_obs = Time(mjd, format="mjd").isot
    header["DATE-OBS"] = date_obs
    header["MJD-OBS"] = mjd
    header["EXPTIME"] = 60.0
    header["RA"] = 10.0
    header["DEC"] = -20.0
    header["ARCFILE"] = f"MUSE.{date_obs}.fits"
    if catg is not None:
        header["HIERARCH ESO DPR CATG"] = catg
        header["HIERARCH ESO DPR TYPE"] = dpr_type
        header["HIERARCH ESO DPR TECH"] = tech
    if pro_catg:
        header["HIERARCH ESO PRO CATG"] = pro_catg
    header["HIERARCH ESO INS MODE"] = mode
    header["HIERARCH ESO INS DROT POSANG"] = 0.0
    header["HIERARCH ESO TPL START"] = tpl_start or date_obs[:19]
    header["HIERARCH ESO TPL NEXP"] = nexp
    header["HIERARCH ESO TPL EXPNO"] = expno
    header["HIERARCH ESO DET READ CURNAME"] = "SCI1.0"
    header["HIERARCH ESO OBS ID"] = 1234
    for i, name in enumerate(LAMP_NAMES, start=1):
        header[f"HIERARCH ESO INS LAMP{i} NAME"] = name
        header[f"HIERARCH ESO INS LAMP{i} ST"] = name in lamps_on
        header[f"HIERARCH ESO INS SHUT{i} NAME"] = f"CU-SHUT{i}"
        header[f"HIERARCH ESO INS SHUT{i} ST"] = name in lamps_on
    # Real MUSE primary headers have ~1200 cards; fillers make the scanner read several blocks.
    for i in range(nfiller):
        header[f"HIERARCH ESO FILL{i // 1000} K{i % 1000:03d}"] = float(i)
    return header


def write_raw(path, header, compression=None, ifus=(1,)):
    """Write a primary header + one small CHANnn extension per IFU; compression None, 'fz' or 'gz'."""
    data = np.zeros((8, 8), dtype=np.uint16)
    extensions = [fits.CompImageHDU(data=data, name=f"CHAN{ifu:02d}") if compression == "fz"
                  else fits.ImageHDU(data=data, name=f"CHAN{ifu:02d}") for ifu in ifus]
    hdul = fits.HDUList([fits.PrimaryHDU(header=header), *extensions])
    if compression == "gz":
        plain = str(path)[:-3]
        hdul.writeto(plain, overwrite=True)
        with open(plain, "rb") as src, gzip.open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
        import os
        os.remove(plain)
    else:
        hdul.writeto(path, overwrite=True)
    return path


def empty_calibration_kit(root):
    """``root/cal`` with an empty file for every static calibration of calib_tables.dic (enough where no
    recipe reads them), and ``root/data/NGC1000/P01/Raw``. Returns (calibration folder, raw folder)."""
    from pymusepipe.config import CALIB_KEYS

    calib = root / "cal"
    calib.mkdir()
    for _, _, name in CALIB_KEYS.values():
        (calib / name).write_bytes(b"")
    raw = root / "data" / "NGC1000" / "P01" / "Raw"
    raw.mkdir(parents=True)
    return calib, raw

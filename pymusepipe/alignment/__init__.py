"""Align MUSE images to a reference image and write MUSE OFFSET_LIST tables.

Public API
----------
align_images
    Offsets, flux scales and backgrounds of MUSE images against a reference -> astropy Table.
write_alignment_offset_list
    That table as an OFFSET_LIST, flagged images left unmoved and unscaled.
write_offset_list, read_offset_list, validate_offset_list, merge_offset_lists
    The MUSE OFFSET_LIST file (sign convention documented in :mod:`pymusepipe.alignment.offset_list`).
read_reference, read_muse_image, image_from_cube, pivot_wavelength
    Inputs.
reference_band, match_filter_name
    The band of a reference image, and its name in a MUSE FILTER_LIST.
rotate_pixtable, rotate_pixtables
    Apply a measured rotation (``ROTANGLE``) to pixel tables through ``ESO INS DROT POSANG``.
"""
from .align import align_images, write_alignment_offset_list
from .fit import AlignmentResult, Quality, fit_alignment
from .museimage import MuseImage, MuseImageError, image_from_cube, read_muse_image
from .offset_list import (OffsetListError, exp_align_is_reliable, merge_offset_lists, read_offset_list, validate_offset_list,
                          write_offset_list)
from .rotation import PixtableRotationError, rotate_pixtable, rotate_pixtables
from .reference import (PIVOT_WAVELENGTHS, ReferenceImage, ReferenceImageError, match_filter_name, pivot_wavelength,
                        read_reference, reference_band)

__all__ = [
    "align_images", "write_alignment_offset_list", "fit_alignment", "AlignmentResult", "Quality",
    "MuseImage", "MuseImageError", "read_muse_image", "image_from_cube",
    "ReferenceImage", "ReferenceImageError", "read_reference", "pivot_wavelength", "PIVOT_WAVELENGTHS",
    "reference_band", "match_filter_name",
    "write_offset_list", "read_offset_list", "validate_offset_list", "merge_offset_lists", "OffsetListError",
    "exp_align_is_reliable", "rotate_pixtable", "rotate_pixtables", "PixtableRotationError",
]

"""A minimal, fast reader of FITS primary headers.

Scanning a MUSE download means reading hundreds of primary headers of ~1200 cards each. astropy's
``getheader`` parses every card (~100 files/s); this reader reads the 2880-byte blocks up to ``END`` and
parses only the keywords asked for (~1000 files/s). ``.fits.gz`` files are decompressed only as far as the
end of the primary header; in ``.fits.fz`` files the primary header is not compressed.

It also tells a complete file from a truncated one (an interrupted download) without reading any data:
the size of each HDU follows from its header (header blocks + ``|BITPIX|/8 * GCOUNT * (PCOUNT + NAXIS1 *
... * NAXISn)`` bytes of data, padded to 2880; for the tile-compressed HDUs of ``.fits.fz`` files that is
the binary table with its heap), so :func:`check_fits_size` seeks from header to header and compares the
end of the last HDU with the file size. A ``.fits.gz`` file is not decompressed for that: its gzip trailer
says how many bytes it decompresses to (``ISIZE``), and a FITS file is a whole number of 2880-byte blocks;
the trailer of a truncated file is whatever bytes happened to be last, which almost never passes.
"""
from __future__ import annotations

import contextlib
import functools
import gzip
import os
import re
import struct
import zlib

__all__ = ["FitsHeaderError", "FitsTruncatedError", "FitsReadError", "read_primary_header",
           "read_primary_header_checked", "check_fits_size"]

BLOCK_SIZE = 2880
CARD_SIZE = 80
# A MUSE primary header has ~1200 cards (~35 blocks); far more means this is not a header.
MAX_HEADER_BLOCKS = 2000


class FitsHeaderError(OSError):
    """The file is not a readable FITS file; the message names it and says what is wrong."""


class FitsTruncatedError(FitsHeaderError):
    """The file is shorter than its headers say (an interrupted download or copy)."""


class FitsReadError(FitsHeaderError):
    """The file could not be read at all (permissions, I/O error): a property of the moment, not of the file's
    content, so not worth caching."""


_END_CARD = "END" + " " * (CARD_SIZE - 3)
# NEXTEND is looked for in the first blocks of the primary header only.
NEXTEND_BLOCKS = 4
# Reading several blocks per call keeps the number of system calls (and gzip calls) low.
BLOCKS_PER_READ = 12


_END_BYTES = _END_CARD.encode()


def _find_end_card(text, start: int) -> int:
    """Offset just after the END card at or after ``start`` (a card boundary) of a str or bytes, or -1."""
    card = _END_BYTES if isinstance(text, bytes) else _END_CARD
    position = text.find(card, start)
    while position >= 0 and position % CARD_SIZE:
        position = text.find(card, position + 1)
    return -1 if position < 0 else position + CARD_SIZE


def _read_header_text(path) -> str:
    """Text of the primary header of ``path`` (through gzip for ``.gz``), up to and including END."""
    name = str(path)
    if not name.endswith(".gz"):
        descriptor = os.open(name, os.O_RDONLY)
        try:
            return _header_at(descriptor, 0, os.fstat(descriptor).st_size, name, "primary header")
        finally:
            os.close(descriptor)
    return _read_gzip_header_text(name)


def _header_at(descriptor, offset: int, size: int, name: str, what: str, extension: bool = False):
    """Text of the header starting at ``offset`` of an open file, read with pread (no seek, no buffer).

    With ``extension=True``, None when no ``XTENSION`` card starts there (bytes after the last HDU).
    """
    data = b""
    # Extension headers are short (a few blocks): smaller reads copy less.
    read_size = BLOCK_SIZE * (BLOCKS_PER_READ // 2 if extension else BLOCKS_PER_READ)
    while len(data) < MAX_HEADER_BLOCKS * BLOCK_SIZE:
        chunk = os.pread(descriptor, read_size, offset + len(data))
        if not data:
            if extension and not chunk.startswith(b"XTENSION="):
                return None
            if not extension and not chunk.startswith(b"SIMPLE  ="):
                raise FitsHeaderError(f"{name}: not a FITS file (does not start with a SIMPLE card)")
        searched_from = max(0, len(data) - len(data) % CARD_SIZE)
        data += chunk
        end = _find_end_card(data, searched_from)
        if end > 0:
            # Decoding only the header (not the data read with it); 'replace' keeps one character per byte.
            return data[:end].decode("ascii", errors="replace")
        if len(chunk) < read_size:
            raise FitsTruncatedError(f"{name}: truncated: {_sizes(size, offset + len(data) + BLOCK_SIZE, True)} "
                                     f"expected (the file ends inside the {what}, before its END card)")
    raise FitsHeaderError(f"{name}: no END card in the first {MAX_HEADER_BLOCKS} blocks of the {what}")


def _read_gzip_header_text(name) -> str:
    text = ""
    try:
        with gzip.open(name, "rb") as handle:
            while len(text) < MAX_HEADER_BLOCKS * BLOCK_SIZE:
                chunk = handle.read(BLOCK_SIZE * BLOCKS_PER_READ)
                if not text and not chunk.startswith(b"SIMPLE  ="):
                    raise FitsHeaderError(f"{name}: not a FITS file (does not start with a SIMPLE card)")
                searched_from = max(0, len(text) - len(text) % CARD_SIZE)
                text += chunk.decode("ascii", errors="replace")
                end = _find_end_card(text, searched_from)
                if end > 0:
                    return text[:end]
                if len(chunk) < BLOCK_SIZE * BLOCKS_PER_READ:
                    raise FitsTruncatedError(f"{name}: truncated: it decompresses to {len(text)} bytes, which end "
                                             "inside the primary header, before its END card")
    except EOFError:
        raise FitsTruncatedError(f"{name}: truncated: the gzip stream ends early, without its end marker, "
                                 f"{len(text)} bytes into the FITS file") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise FitsHeaderError(f"{name}: corrupt compressed file ({exc})") from None
    raise FitsHeaderError(f"{name}: no END card in the first {MAX_HEADER_BLOCKS} header blocks")


@functools.lru_cache(maxsize=16)
def _hierarch_pattern(keywords: frozenset):
    """A regular expression finding the HIERARCH cards of the wanted keywords.

    The literal prefix lets the regular-expression engine jump from one HIERARCH card to the next in C.
    """
    names = sorted(keywords, key=len, reverse=True)
    return re.compile("HIERARCH (" + "|".join(re.escape(k) for k in names) + ") *=")


def _iter_cards(text, keywords):
    """(keyword, value text) of the wanted cards present in a header text."""
    hierarch = frozenset(k for k in keywords if " " in k or len(k) > 8)
    if hierarch:
        for match in _hierarch_pattern(hierarch).finditer(text):
            card_start = match.start()
            if card_start % CARD_SIZE == 0:  # else the text occurs inside another card (e.g. a COMMENT)
                yield match.group(1), text[match.end():card_start + CARD_SIZE]
    for key in keywords:
        if key in hierarch:
            continue
        prefix = key.ljust(8) + "= "
        position = text.find(prefix)
        while position >= 0 and position % CARD_SIZE:
            position = text.find(prefix, position + 1)
        if position >= 0:
            yield key, text[position + 10:position + CARD_SIZE]


def _parse_value(text: str):
    text = text.lstrip()
    if text.startswith("'"):
        # FITS strings: '' is an escaped quote; trailing spaces are not significant.
        chars, i = [], 1
        while i < len(text):
            if text[i] == "'":
                if text[i + 1:i + 2] == "'":
                    chars.append("'")
                    i += 2
                    continue
                break
            chars.append(text[i])
            i += 1
        return "".join(chars).rstrip()
    value = text.split("/", 1)[0].strip()
    if value == "T":
        return True
    if value == "F":
        return False
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value.replace("D", "E"))
    except ValueError:
        return value


def read_primary_header(path, keywords) -> dict:
    """Read the requested keywords of a FITS file's primary header.

    Parameters
    ----------
    path : str or Path
        A ``.fits``, ``.fits.fz`` or ``.fits.gz`` file.
    keywords : collection of str
        Keywords as astropy names them: ``'OBJECT'``, or ``'ESO DPR TYPE'`` for HIERARCH cards.

    Returns
    -------
    dict
        keyword -> value (str, int, float or bool) for the keywords present.

    Raises
    ------
    FitsHeaderError
        If the file is not FITS, is truncated or its compression is corrupt.
    """
    with _read_errors(path):
        text = _read_header_text(path)
    return {key: _parse_value(value) for key, value in _iter_cards(text, frozenset(keywords))}


def read_primary_header_checked(path, keywords) -> dict:
    """:func:`read_primary_header`, and raise :class:`FitsTruncatedError` if the file is truncated.

    The primary header is read once; the structure check then costs one small read per extension header
    (none for ``.fits.gz``, whose gzip trailer is read instead).
    """
    name = str(path)
    with _read_errors(path):
        if name.endswith(".gz"):
            text = _read_gzip_header_text(name)
            _check_gzip_size(name, text)
        else:
            descriptor = os.open(name, os.O_RDONLY)  # one open for the header and the structure
            try:
                size = os.fstat(descriptor).st_size
                text = _header_at(descriptor, 0, size, name, "primary header")
                _check_structure(descriptor, size, name, text)
            finally:
                os.close(descriptor)
    return {key: _parse_value(value) for key, value in _iter_cards(text, frozenset(keywords))}


@contextlib.contextmanager
def _read_errors(path):
    """Operating-system errors while reading become :class:`FitsReadError` naming the file."""
    try:
        yield
    except FitsHeaderError:
        raise
    except OSError as error:
        raise FitsReadError(f"{path}: cannot be read ({error.strerror or error})") from error


def _card_value(text: str, key: str):
    """Value of a (non-HIERARCH) card of a header text, or None."""
    prefix = key.ljust(8) + "= "
    position = text.find(prefix)
    while position >= 0 and position % CARD_SIZE:
        position = text.find(prefix, position + 1)
    return None if position < 0 else _parse_value(text[position + 10:position + CARD_SIZE])


def _mandatory_value(text: str, index: int, key: str):
    """Value of the card ``key``, expected as card number ``index`` (the FITS standard fixes the order of
    BITPIX, NAXIS, NAXISn, PCOUNT, GCOUNT); searched for if a non-conforming writer put it elsewhere."""
    start = index * CARD_SIZE
    if text.startswith(key, start) and text.startswith("= ", start + 8) and \
            text[start + len(key):start + 8].strip() == "":
        try:
            return int(text[start + 10:start + 30])  # fixed format: the integer ends in column 30
        except ValueError:
            return _parse_value(text[start + 10:start + CARD_SIZE])
    return _card_value(text, key)


def _data_size(text: str, name: str, what: str) -> int:
    """Bytes of data (unpadded) an HDU's header announces."""
    bitpix = _mandatory_value(text, 1, "BITPIX")
    naxis = _mandatory_value(text, 2, "NAXIS")
    for key, value in (("BITPIX", bitpix), ("NAXIS", naxis)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise FitsHeaderError(f"{name}: the {what} has no valid {key} card ({value!r})")
    if naxis == 0:
        return 0
    lengths = []
    for axis in range(1, naxis + 1):
        length = _mandatory_value(text, 2 + axis, f"NAXIS{axis}")
        if not isinstance(length, int) or length < 0:
            raise FitsHeaderError(f"{name}: the {what} has no valid NAXIS{axis} card ({length!r})")
        lengths.append(length)
    primary = text.startswith("SIMPLE")
    groups = primary and lengths[0] == 0
    if groups:
        lengths = lengths[1:]  # random groups: NAXIS1 = 0 is not a dimension
    count = 1
    for length in lengths:
        count *= length
    pcount, gcount = 0, 1
    if not primary or groups:
        # PCOUNT and GCOUNT follow the NAXISn cards of an extension (a binary table's heap is in PCOUNT).
        pcount = _mandatory_value(text, 3 + naxis, "PCOUNT")
        gcount = _mandatory_value(text, 4 + naxis, "GCOUNT")
        pcount = pcount if isinstance(pcount, int) else 0
        gcount = gcount if isinstance(gcount, int) else 1
    return abs(bitpix) // 8 * gcount * (pcount + count)


def _padded(nbytes: int) -> int:
    return -(-nbytes // BLOCK_SIZE) * BLOCK_SIZE


def _sizes(actual: int, expected: int, at_least: bool = False) -> str:
    """'40.0 MB of 72.0 MB' (the unit chosen by the expected size)."""
    scale, unit = (1e6, "MB") if expected >= 1e6 else (1e3, "kB")
    return f"{actual / scale:.1f} {unit} of {'at least ' if at_least else ''}{expected / scale:.1f} {unit}"


def check_fits_size(path, primary_header: str | None = None):
    """Raise :class:`FitsTruncatedError` if a FITS file is shorter than its headers say.

    Parameters
    ----------
    path : str or Path
        A ``.fits``, ``.fits.fz`` or ``.fits.gz`` file.
    primary_header : str, optional
        The primary header text, when already read.

    Raises
    ------
    FitsTruncatedError
        With a reason like ``truncated: 40.0 MB of 72.0 MB expected (the file ends inside the data of
        HDU 5, CHAN05)``.
    FitsHeaderError
        If a header is missing or invalid where one should start.
    """
    name = str(path)
    if name.endswith(".gz"):
        _check_gzip_size(name, primary_header)
        return
    descriptor = os.open(name, os.O_RDONLY)
    try:
        size = os.fstat(descriptor).st_size
        text = primary_header if primary_header is not None else _header_at(descriptor, 0, size, name,
                                                                            "primary header")
        _check_structure(descriptor, size, name, text)
    finally:
        os.close(descriptor)


def _check_structure(descriptor, size: int, name: str, text: str):
    """Walk the HDUs of an open plain FITS file from header to header (data are skipped, never read)."""
    # NEXTEND, where a writer gives it, comes with the first cards (a search of the whole ~1200-card primary
    # header for a keyword that is mostly absent would cost more than the rest of this check).
    nextend = _card_value(text[:NEXTEND_BLOCKS * BLOCK_SIZE], "NEXTEND")
    offset, index = 0, 0
    while True:
        what = "primary HDU" if index == 0 else f"HDU {index}"
        data_start = offset + _padded(len(text))
        data_end = data_start + _data_size(text, name, what)
        if size < data_end:
            extname = _card_value(text, "EXTNAME")
            if extname:
                what += f", {extname}"
            # Later HDUs are unknown unless NEXTEND says this one is the last.
            at_least = not (isinstance(nextend, int) and index == nextend)
            raise FitsTruncatedError(f"{name}: truncated: {_sizes(size, _padded(data_end), at_least)} expected "
                                     f"(the file ends inside the data of {what})")
        offset = data_start + _padded(data_end - data_start)
        if offset >= size:
            break  # the last HDU may lack its padding: its data are complete all the same
        text = _header_at(descriptor, offset, size, name, f"header of HDU {index + 1}", extension=True)
        if text is None:
            break  # bytes after the last HDU (blocks some writers add): not ours to judge
        index += 1
    if isinstance(nextend, int) and index < nextend:
        raise FitsTruncatedError(f"{name}: truncated: {index} of the {nextend} extensions announced by "
                                 f"NEXTEND ({size / 1e6:.1f} MB)")


# Deflate cannot compress by more than ~1032:1: a bound on how many times ISIZE (mod 2**32) may have wrapped.
_MAX_DEFLATE_RATIO = 1032


def _check_gzip_size(name: str, primary_header: str | None):
    with open(name, "rb") as stream:
        stream.seek(0, os.SEEK_END)
        size = stream.tell()
        if size < 18:
            raise FitsTruncatedError(f"{name}: truncated: {size} bytes, too short for a gzip file")
        stream.seek(size - 4)
        isize = struct.unpack("<I", stream.read(4))[0]
    text = primary_header if primary_header is not None else _read_gzip_header_text(name)
    minimum = _padded(len(text)) + _padded(_data_size(text, name, "primary HDU"))
    wraps = size * _MAX_DEFLATE_RATIO // 2 ** 32 + 1
    # The uncompressed size is ISIZE + k * 2**32 (ISIZE is stored modulo 2**32).
    for k in range(wraps + 1):
        total = isize + k * 2 ** 32
        if total >= minimum and total % BLOCK_SIZE == 0:
            return
    raise FitsTruncatedError(f"{name}: truncated or corrupt: its gzip trailer says it decompresses to {isize} "
                             f"bytes, which is not a whole FITS file (a multiple of {BLOCK_SIZE} bytes, at least "
                             f"{minimum}); the download was probably interrupted")

"""What is on the sky and how one exposure sees it: point sources, an emission-line disc, the night sky,
the pointing, seeing, transparency and airmass.

Fluxes are in the units of the reduced MUSE cubes: 1e-20 erg/s/cm2/A (point sources: total; disc:
per spaxel; night sky: per arcsec2). Sources are dimmed by extinction and transparency; the night sky
is not (it is emitted in the atmosphere).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import erf, gammaln

from . import spectra

C_KMS = 299792.458

#: The Moffat seeing PSF as a sum of this many circular Gaussians (see :func:`psf_components`).
MOFFAT_COMPONENTS = 12


def psf_components(fwhm, beta=None):
    """The seeing PSF as a weighted sum of circular Gaussians: ``(weights, sigmas)``, weights summing to 1.

    ``beta=None`` is one Gaussian of FWHM ``fwhm``. Otherwise a Moffat profile ``(1 + r^2/a^2)^-beta`` of that
    FWHM, which is exactly a Gaussian scale mixture (the Gaussians' ``1/(2 sigma^2)`` follow a Gamma law of shape
    ``beta - 1`` in units of ``1/a^2``): the mixture is sampled on a logarithmic grid out to Gaussians of
    ``sigma = 8 x FWHM``. With :data:`MOFFAT_COMPONENTS` components the encircled energy is within 1e-4 and
    the profile within 0.1 % of the Moffat out to 5 FWHM (beta 2.5-4). A sum of Gaussians keeps the rendering
    separable in x and y, so every pixel's share is integrated exactly with two error functions.
    """
    if beta is None:
        return np.ones(1), np.array([fwhm / 2.3548])
    a = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    t_min, t_max = a ** 2 / (2.0 * (8.0 * fwhm) ** 2), 30.0
    u = np.linspace(np.log(t_min), np.log(t_max), MOFFAT_COMPONENTS)
    t = np.exp(u)
    weights = np.exp((beta - 1.0) * u - t - gammaln(beta - 1.0))
    return weights / weights.sum(), a / np.sqrt(2.0 * t)


#: A PSF component is drawn on a slice only if at least this share of the star's light falls within its height.
MIN_SHARE = 1e-7

#: A mixture's component is drawn along a slice only as far as it gives a pixel this share of the light: at most
#: about 1e-4 of a star's light at one wavelength is left out over the ~90,000 pixels of a CCD row in 24 IFUs.
MIN_PIXEL_SHARE = 1e-9

#: Step [spaxel] of the grid on which a multi-component PSF is tabulated along a slice (see
#: :func:`along_slice_fractions`).
PROFILE_STEP = 0.02


def reach(shares, sigmas, pixel_length):
    """How far from a star along a slice [spaxel] its PSF components still put light in a pixel: 7 sigma for a
    single Gaussian; for a mixture, where no component gives a pixel :data:`MIN_PIXEL_SHARE` of the light
    (the wide, faint components of a Moffat's wings would otherwise reach over the whole slice for every star).
    """
    if len(shares) == 1:
        return 7.0 * float(sigmas[0])
    peaks = shares * pixel_length / (np.sqrt(2.0 * np.pi) * sigmas)
    ratio = np.maximum(peaks / MIN_PIXEL_SHARE, 1.0)
    return float(np.max(sigmas * np.sqrt(2.0 * np.log(ratio))))


def along_slice_fractions(xpos, centre, pixel_length, shares, root2_sigmas):
    """Share of a star's light in each CCD pixel of a slice: the pixels' focal positions ``xpos`` along the slice
    [spaxel], the star's ``centre`` there, each Gaussian component's share of the light within the slice's height
    and its ``sqrt(2) sigma`` [spaxel].

    One Gaussian (a Gaussian PSF) is integrated exactly over every pixel. A mixture (a Moffat PSF) is
    integrated exactly on a grid of :data:`PROFILE_STEP` and interpolated linearly at the pixels: the trace's
    drift makes every row's positions different, and evaluating a dozen components at each of a slice's
    ~400,000 pixels for every star within reach of its wings made Moffat frames 54 times slower to draw. Linear
    interpolation errs by at most ``step^2 / 8`` times the profile's largest second derivative: under 4e-5 of
    its peak at 0.5-1.2" seeing.
    """
    def profile(x):
        return sum(share * 0.5 * (erf((x + pixel_length / 2 - centre) / root2_sigma)
                                  - erf((x - pixel_length / 2 - centre) / root2_sigma))
                   for share, root2_sigma in zip(shares, root2_sigmas))

    if len(shares) == 1:
        return profile(xpos)
    low = float(xpos.min())
    position = (xpos - low) * (1.0 / PROFILE_STEP)        # on the grid, in steps
    cell = position.astype(np.int32)
    values = profile(low + PROFILE_STEP * np.arange(int(cell.max()) + 2))
    left = values[cell]
    return left + (position - cell) * (values[cell + 1] - left)


@dataclass(frozen=True)
class PointSource:
    """A star: position [deg] and a blackbody spectrum scaled to a V magnitude."""

    ra: float
    dec: float
    vmag: float
    temperature: float = 6000.0

    def spectrum(self, wavelength):
        """Flux density [1e-20 erg/s/cm2/A]."""
        return spectra.blackbody_star(wavelength, self.temperature, self.vmag) * 1e20


#: Rest air wavelengths [A] of the disc's emission lines and their flux relative to H-alpha.
DISC_LINES = {
    "Hbeta": (4861.333, 0.30),
    "[OIII]4959": (4958.911, 0.12),
    "[OIII]5007": (5006.843, 0.36),
    "[NII]6548": (6548.050, 0.12),
    "Halpha": (6562.819, 1.00),
    "[NII]6583": (6583.460, 0.36),
    "[SII]6716": (6716.440, 0.20),
    "[SII]6731": (6730.810, 0.15),
}


@dataclass(frozen=True)
class EmissionDisc:
    """An inclined exponential disc with a rotating emission-line gas layer and a flat continuum.

    Attributes
    ----------
    ra, dec : float
        Centre [deg].
    position_angle : float
        Of the major axis, east of north [deg].
    inclination : float
        [deg], 0 = face on.
    scale_length : float
        Exponential scale length [arcsec] (of continuum and lines alike).
    continuum : float
        Central continuum surface brightness [1e-20 erg/s/cm2/A per spaxel].
    halpha : float
        Central H-alpha surface brightness [1e-20 erg/s/cm2 per spaxel].
    velocity : float
        Systemic velocity [km/s] (relativistic Doppler not modelled: lambda = lambda0 (1 + v/c)).
    rotation : float
        Flat rotation speed [km/s], reached at ``turnover`` [arcsec].
    dispersion : float
        Gas velocity dispersion [km/s].
    """

    ra: float
    dec: float
    position_angle: float = 30.0
    inclination: float = 60.0
    scale_length: float = 6.0
    continuum: float = 20.0
    halpha: float = 600.0
    velocity: float = 1200.0
    rotation: float = 150.0
    turnover: float = 4.0
    dispersion: float = 40.0

    def surface_and_velocity(self, east, north):
        """Relative surface brightness (1 at the centre) and line-of-sight velocity [km/s] at sky
        offsets ``east``, ``north`` [arcsec] from the centre."""
        pa = np.radians(self.position_angle)
        cos_i = np.cos(np.radians(self.inclination))
        major = east * np.sin(pa) + north * np.cos(pa)
        minor = -east * np.cos(pa) + north * np.sin(pa)
        radius = np.hypot(major, minor / cos_i)
        profile = np.exp(-radius / self.scale_length)
        cos_theta = np.divide(major, radius, out=np.zeros_like(radius), where=radius > 0)
        v_circ = self.rotation * np.tanh(radius / self.turnover)
        los = self.velocity + v_circ * np.sin(np.radians(self.inclination)) * cos_theta
        return profile, los


@dataclass(frozen=True)
class ExposureConditions:
    """How one exposure sees the sky.

    Attributes
    ----------
    ra, dec : float
        TRUE pointing [deg] (the header carries this plus the pointing error).
    exptime : float
        [s].
    airmass : float
    seeing : float
        FWHM of the PSF [arcsec].
    transparency : float
        Fraction of the source light that passes the clouds (expected flux scale).
    raman : bool
        The laser guide stars are on: laser light Raman-scattered by the air adds the RAMAN_LINES lines
        (emitted in the atmosphere, like the night sky: not extincted).
    psf_beta : float, optional
        Moffat index of the PSF; None for a Gaussian PSF (:func:`psf_components`).
    """

    ra: float
    dec: float
    exptime: float
    airmass: float
    seeing: float
    transparency: float = 1.0
    raman: bool = False
    psf_beta: float | None = None


@dataclass
class SkyScene:
    """Sources plus night sky. ``night_sky=False`` for frames without sky emission (none here)."""

    stars: list = field(default_factory=list)
    disc: EmissionDisc | None = None
    night_sky: bool = True

    # -- geometry ---------------------------------------------------------------------------------------
    @staticmethod
    def tangent_offsets(ra, dec, ra0, dec0):
        """Gnomonic (TAN) standard coordinates [arcsec] of (ra, dec) around (ra0, dec0): (east, north)."""
        ra, dec = np.radians(ra), np.radians(dec)
        ra0, dec0 = np.radians(ra0), np.radians(dec0)
        cos_c = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
        xi = np.cos(dec) * np.sin(ra - ra0) / cos_c
        eta = (np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(ra - ra0)) / cos_c
        return np.degrees(xi) * 3600.0, np.degrees(eta) * 3600.0

    @staticmethod
    def focal_to_offsets(model, xpos, ypos):
        """Sky offsets (east, north) [arcsec] from the pointing of focal-plane position (xpos, ypos).

        Position angle 0: +xpos points west (RA decreases, CD1_1 < 0), +ypos north.
        """
        x0, y0 = model.focal_centre
        scale = model.spaxel_scale
        return -(np.asarray(xpos) - x0) * scale, (np.asarray(ypos) - y0) * scale

    @staticmethod
    def offsets_to_focal(model, east, north):
        """Inverse of :meth:`focal_to_offsets`."""
        x0, y0 = model.focal_centre
        scale = model.spaxel_scale
        return x0 - np.asarray(east) / scale, y0 + np.asarray(north) / scale

    # -- rendering --------------------------------------------------------------------------------------
    def slice_electrons(self, model, ifu, k, maps, exposure: ExposureConditions, add_lines):
        """Expected electrons (rows x columns of the slice box, before the illumination profile)."""
        wavelength = maps.wavelength
        # smooth factors (throughput, extinction) vary by < 1e-3 over the ~2 A a row spans across a
        # slice: evaluate them on the slice's central column and broadcast along the rows
        centre_wavelength = wavelength[:, wavelength.shape[1] // 2].astype(np.float64)
        per_flux = spectra.electrons_per_flux_unit(centre_wavelength, exposure.exptime,
                                                   maps.dispersion[:, wavelength.shape[1] // 2])[:, None]
        atmosphere = (exposure.transparency
                      * 10 ** (-0.4 * spectra.extinction(centre_wavelength) * exposure.airmass))[:, None]
        # sky area of one CCD pixel: (slice length / CCD width) x slice pitch, in spaxels and arcsec2
        layout = model.layout(ifu)
        pixel_length = model.slice_length / layout.width[k]
        pixel_area_arcsec2 = pixel_length * maps.slice_height * model.spaxel_scale ** 2
        source_continuum = np.zeros(wavelength.shape, dtype=np.float32)
        weights, sigmas = psf_components(exposure.seeing, exposure.psf_beta)
        sigmas = sigmas / model.spaxel_scale                                            # [spaxel]
        root2_sigmas = np.sqrt(2.0) * sigmas
        mid_row = wavelength.shape[0] // 2
        x_mid = maps.xpos[mid_row]
        for star in self.stars:
            east, north = self.tangent_offsets(star.ra, star.dec, exposure.ra, exposure.dec)
            xs, ys = self.offsets_to_focal(model, east, north)
            # share of the star's light that falls within the slice's height, per PSF component
            shares = weights * 0.5 * (erf((maps.ypos + maps.slice_height / 2 - ys) / root2_sigmas)
                                      - erf((maps.ypos - maps.slice_height / 2 - ys) / root2_sigmas))
            active = shares >= MIN_SHARE
            if not active.any():
                continue
            near = np.nonzero(np.abs(x_mid - xs) < reach(shares[active], sigmas[active], pixel_length) + 3)[0]
            if near.size == 0:
                continue
            first, last = near[0], near[-1] + 1
            fraction = along_slice_fractions(maps.xpos[:, first:last], xs, pixel_length, shares[active],
                                             root2_sigmas[active])
            # a smooth stellar continuum hardly changes over the ~2 A a row spans across a slice
            spectrum = star.spectrum(centre_wavelength).astype(np.float32)[:, None]
            source_continuum[:, first:last] += (fraction * spectrum).astype(np.float32)
        lines_w, lines_a, lines_s = [], [], []
        if self.disc is not None:
            east, north = self.focal_to_offsets(model, maps.xpos, maps.ypos)
            d_east, d_north = self.tangent_offsets(self.disc.ra, self.disc.dec, exposure.ra, exposure.dec)
            profile, los = self.disc.surface_and_velocity(east - d_east, north - d_north)
            spaxel_fraction = pixel_area_arcsec2 / model.spaxel_scale ** 2
            source_continuum += self.disc.continuum * profile * spaxel_fraction
            for rest, ratio in DISC_LINES.values():
                # one centre per column, from the sky position of the row the line falls on: the trace
                # drifts with the row, so the middle row's position is up to 0.6 spaxel away (H-beta)
                line_row = int(np.clip(np.rint(layout.row_of_wavelength(
                    k, rest * (1.0 + self.disc.velocity / C_KMS), 0.0)), 0, wavelength.shape[0] - 1))
                prof_col, los_col = profile[line_row], los[line_row]
                centre = rest * (1.0 + los_col / C_KMS)
                # LSF (in rows) and the gas dispersion (converted to rows) add in quadrature
                intrinsic_rows = centre * self.disc.dispersion / C_KMS / maps.dispersion[line_row]
                flux = self.disc.halpha * ratio * prof_col * spaxel_fraction
                conv = spectra.electrons_per_flux_unit(centre, exposure.exptime, 1.0)
                atm = exposure.transparency * 10 ** (-0.4 * spectra.extinction(centre) * exposure.airmass)
                lines_w.append(centre)
                lines_a.append(flux * conv * atm)
                lines_s.append(np.hypot(model.lsf_sigma_pix, intrinsic_rows))
        box = source_continuum
        box *= (atmosphere * per_flux).astype(np.float32)
        if self.night_sky:
            box += (spectra.sky_continuum(centre_wavelength)[:, None] * pixel_area_arcsec2
                    * per_flux).astype(np.float32)
            ncol = maps.columns.size
            emission = list(spectra.SKY_LINES) + (list(spectra.raman_lines()) if exposure.raman else [])
            for _, _, centre, flux in emission:
                conv = spectra.electrons_per_flux_unit(centre, exposure.exptime, 1.0)
                lines_w.append(np.full(ncol, centre))
                lines_a.append(np.full(ncol, flux * pixel_area_arcsec2 * conv))
                lines_s.append(np.full(ncol, model.lsf_sigma_pix))
        if lines_w:
            add_lines(box, model, ifu, k, maps.columns, np.array(lines_w), np.array(lines_a),
                      np.array(lines_s))
        return box


def source_to_sky_ratio(model, sky_scene: SkyScene, exposure: ExposureConditions):
    """Per spaxel of the simulated strips: white-light (4750-9350 A) source flux over night-sky flux.

    Sources are the stars (the exposure's PSF, at spaxel centres) and the disc continuum, dimmed by
    extinction at 6500 A and transparency, as the exposure records them; the sky is the continuum. Used to
    tell how much of a field is empty enough to measure the sky on (the darkest spaxels muse_scipost's
    ``--skymethod=model`` and muse_create_sky use).

    Returns
    -------
    ndarray
        One ratio per spaxel (48 slices x ``slice_length`` spaxels per simulated IFU).
    """
    length = int(round(model.slice_length))
    along = np.arange(length) - (length - 1) / 2.0
    xs, ys = [], []
    for ifu in model.ifus:
        for k in range(48):
            x, y, _ = model.slice_focal_position(ifu, k)
            xs.append(x + along)
            ys.append(np.full(length, y))
    east, north = SkyScene.focal_to_offsets(model, np.concatenate(xs), np.concatenate(ys))
    white = np.arange(4750.0, 9350.0, 5.0)
    spaxel_area = model.spaxel_scale ** 2
    dimming = exposure.transparency * 10 ** (-0.4 * float(spectra.extinction(6500.0)) * exposure.airmass)
    source = np.zeros(east.size)
    weights, sigmas = psf_components(exposure.seeing, exposure.psf_beta)
    for star in sky_scene.stars:
        s_east, s_north = SkyScene.tangent_offsets(star.ra, star.dec, exposure.ra, exposure.dec)
        r2 = (east - s_east) ** 2 + (north - s_north) ** 2
        for weight, sigma in zip(weights, sigmas):
            source += weight * float(np.mean(star.spectrum(white))) * spaxel_area / (2 * np.pi * sigma ** 2) \
                * np.exp(-0.5 * r2 / sigma ** 2)
    if sky_scene.disc is not None:
        d_east, d_north = SkyScene.tangent_offsets(sky_scene.disc.ra, sky_scene.disc.dec, exposure.ra, exposure.dec)
        profile, _ = sky_scene.disc.surface_and_velocity(east - d_east, north - d_north)
        source += sky_scene.disc.continuum * profile
    sky = float(np.mean(spectra.sky_continuum(white))) * spaxel_area
    return source * dimming / sky

"""A known straight track written as NMEA (or GPX), so tests can say where each instant must be."""
from __future__ import annotations

import calendar
import time
from pathlib import Path

LAT0, LON0 = 48.1, 11.5
DLAT = 0.0001          # degrees north per second (~11 m/s)
T0 = calendar.timegm((2024, 5, 1, 10, 0, 0))


def track(t: float) -> tuple[float, float]:
    """Where the vehicle is ``t`` seconds after T0."""
    return LAT0 + DLAT * t, LON0


def sentence(body: str) -> str:
    c = 0
    for ch in body:
        c ^= ord(ch)
    return f"${body}*{c:02X}"


def _dm(v: float, pos: str, neg: str, width: int) -> tuple[str, str]:
    a = abs(v)
    d = int(a)
    return f"{d:0{width}d}{(a - d) * 60:07.4f}", pos if v >= 0 else neg


def epoch_sentences(t: float, sats: int = 9) -> list[str]:
    """RMC, GGA and VTG for T0 + t."""
    lat, lon = track(t)
    tm = time.gmtime(T0 + t)
    hms = time.strftime("%H%M%S", tm) + f".{int(round((t % 1) * 100)):02d}"
    date = time.strftime("%d%m%y", tm)
    la, ns = _dm(lat, "N", "S", 2)
    lo, ew = _dm(lon, "E", "W", 3)
    return [sentence(f"GPRMC,{hms},A,{la},{ns},{lo},{ew},21.38,0.0,{date},,,A"),
            sentence(f"GPGGA,{hms},{la},{ns},{lo},{ew},1,{sats:02d},0.9,{520 + t:.1f},M,47.0,M,,"),
            sentence("GPVTG,0.0,T,,M,21.38,N,39.60,K,A")]


def write_nmea(path: Path, seconds: int, garbage: bool = False) -> Path:
    lines = []
    for s in range(seconds):
        lines += epoch_sentences(float(s))
        if garbage:
            lines += ["$GPGGA,garbage,,*00", "\x00\xff not nmea at all", sentence("GPGGA,1")[:-2] + "FF"]
    path.write_text("\r\n".join(lines) + "\r\n", encoding="latin-1")
    return path


def write_gpx(path: Path, seconds: int) -> Path:
    pts = []
    for s in range(seconds):
        lat, lon = track(s)
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + s))
        pts.append(f'<trkpt lat="{lat:.7f}" lon="{lon:.7f}"><ele>{520 + s}</ele><time>{when}</time></trkpt>')
    path.write_text('<?xml version="1.0"?><gpx version="1.1" xmlns="http://www.topografix.com/GPX/1/1">'
                    f'<trk><trkseg>{"".join(pts)}</trkseg></trk></gpx>')
    return path

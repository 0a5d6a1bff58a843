"""Write the report's files: report.geojson, segments.csv, condition.png, thumbs/, index.html."""
from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from viewer.report.dedup import Crack
from viewer.report.load import Frame
from viewer.report.segments import Segment

COLOURS = {"good": "#1a9850", "fair": "#fdae61", "poor": "#d73027", "not surveyed": "#9e9e9e"}
TRACK = "#1f4e9e"   # the track's colour: the browser test looks for it


def geojson(segs: list[Segment], cracks: list[Crack]) -> dict[str, Any]:
    feats = [{"type": "Feature", "geometry": {"type": "LineString", "coordinates": [list(c) for c in s.coords]},
              "properties": {"kind": "segment", **s.row()}} for s in segs]
    feats += [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [c.lon, c.lat]},
               "properties": {"kind": "crack", "frame": c.frame, "chainage_m": round(c.s, 2),
                              **{k: c.info.get(k) for k in ("type", "severity", "length_m", "max_width_mm", "area_m2")}}}
              for c in cracks]
    return {"type": "FeatureCollection", "features": feats}


def write_csv(path: Path, segs: list[Segment]) -> None:
    rows = [s.row() for s in segs]
    with path.open("w", newline="") as fh:
        if rows:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


def chart(path: Path, segs: list[Segment], width: int = 900, height: int = 240) -> None:
    """Cracked % per segment along the chainage, bars coloured by condition (drawn with OpenCV)."""
    import cv2

    img = np.full((height, width, 3), 255, np.uint8)
    if segs:
        end = max(s.s1 for s in segs) or 1.0
        top = max([20.0] + [s.cracked_pct or 0 for s in segs])
        for s in segs:
            x0, x1 = int(40 + s.s0 / end * (width - 60)), int(40 + s.s1 / end * (width - 60))
            pct = s.cracked_pct if s.condition != "not surveyed" else top
            y = int(height - 30 - (pct or 0) / top * (height - 60))
            c = COLOURS[s.condition].lstrip("#")
            bgr = tuple(int(c[i:i + 2], 16) for i in (4, 2, 0))
            cv2.rectangle(img, (x0, y), (max(x0 + 1, x1 - 1), height - 30), bgr, -1)
        for pct in (5, 20):
            y = int(height - 30 - pct / top * (height - 60))
            cv2.line(img, (40, y), (width - 20, y), (80, 80, 80), 1)
            cv2.putText(img, f"{pct}%", (2, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
        cv2.putText(img, f"chainage 0 - {end:.0f} m; grey = not surveyed", (40, height - 10),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    cv2.imwrite(str(path), img)


def thumbnails(folder: Path, frames: list[Frame], n: int = 6) -> list[str]:
    """The n frames with the largest crack area: camera JPEG with the mask in red, else the mask."""
    import cv2

    from edge.wire import decode

    folder.mkdir(exist_ok=True)
    worst = sorted(frames, key=lambda f: -float((f.header.get("ground") or {}).get("crack_area_m2")
                                                  or f.header.get("crack_ratio", 0)))[:n]
    names = []
    for f in worst:
        msg = decode(f.frames)
        img = msg.frame() if msg.frame_jpeg is not None else cv2.cvtColor(msg.mask, cv2.COLOR_GRAY2BGR)
        if img.shape[:2] != msg.mask.shape:
            img = cv2.resize(img, (msg.mask.shape[1], msg.mask.shape[0]))
        img[msg.mask > 0] = (0, 0, 255)
        name = f"{f.vehicle}-{f.run}-{f.seq:06d}.jpg".replace("/", "_")
        cv2.imwrite(str(folder / name), img)
        names.append(name)
    return names


def page(path: Path, gj: dict[str, Any] | None, segs: list[Segment], thumbs: list[str], notes: list[str]) -> None:
    """One self-contained HTML page: the map is inline SVG drawn by inline JS, no network."""
    rows = "".join("<tr class='seg'>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in s.row().values()) + "</tr>"
                   for s in segs)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in (segs[0].row() if segs else {}))
    note = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in notes)
    imgs = "".join(f"<figure><img src='thumbs/{t}' width='240'><figcaption>{t}</figcaption></figure>" for t in thumbs)
    data = json.dumps(gj).replace("</", "<\\/") if gj else "null"
    path.write_text(_TEMPLATE.replace("%ROWS%", rows).replace("%HEAD%", head).replace("%NOTES%", note)
                    .replace("%THUMBS%", imgs).replace("%DATA%", data).replace("%TRACK%", TRACK)
                    .replace("%COLOURS%", json.dumps(COLOURS)))


_TEMPLATE = """<!doctype html><html><head><meta charset="utf-8"><title>Crack inspection report</title>
<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ccc;padding:2px 4px}figure{display:inline-block;margin:4px}.note{color:#a00}</style></head>
<body><h1>Crack inspection report</h1>%NOTES%
<svg id="map" width="900" height="500" style="border:1px solid #888;background:#fff"></svg>
<p>Track in blue; segments coloured good / fair / poor / not surveyed; dots are cracks (counted once).</p>
<img src="condition.png" alt="condition along the chainage"><h2>Segments</h2>
<table><tr>%HEAD%</tr>%ROWS%</table><h2>Worst frames</h2>%THUMBS%
<script>
"use strict";
const DATA = %DATA%, COL = %COLOURS%, svg = document.getElementById("map"), NS = "http://www.w3.org/2000/svg";
if (!DATA) { svg.style.display = "none"; } else {
  const feats = DATA.features, pts = [];
  feats.forEach(f => (f.geometry.type === "Point" ? [f.geometry.coordinates] : f.geometry.coordinates).forEach(c => pts.push(c)));
  const lat0 = pts.reduce((a, c) => a + c[1], 0) / pts.length, k = Math.cos(lat0 * Math.PI / 180);
  const xs = pts.map(c => c[0] * k), ys = pts.map(c => c[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const sc = Math.min(860 / ((x1 - x0) || 1e-9), 460 / ((y1 - y0) || 1e-9));
  const P = c => [20 + (c[0] * k - x0) * sc, 480 - (c[1] - y0) * sc];
  const add = (tag, attrs) => { const e = document.createElementNS(NS, tag);
    for (const a in attrs) e.setAttribute(a, attrs[a]); svg.appendChild(e); return e; };
  feats.filter(f => f.properties.kind === "segment").forEach(f => {
    const d = f.geometry.coordinates.map(P).map(p => p.join(",")).join(" ");
    add("polyline", {points: d, stroke: "%TRACK%", "stroke-width": 9, fill: "none", class: "track"});
    add("polyline", {points: d, stroke: COL[f.properties.condition], "stroke-width": 4, fill: "none", class: "segment"})
      .appendChild(document.createElementNS(NS, "title")).textContent =
        f.properties.from_m + "-" + f.properties.to_m + " m: " + f.properties.condition;
  });
  feats.filter(f => f.properties.kind === "crack").forEach(f => {
    const p = P(f.geometry.coordinates); add("circle", {cx: p[0], cy: p[1], r: 2, fill: "#000", class: "crack"}); });
}
</script></body></html>
"""


def write_all(out: Path, segs: list[Segment], cracks: list[Crack], frames: list[Frame], notes: list[str],
              with_map: bool) -> None:
    gj = geojson(segs, cracks) if with_map else None
    if gj is not None:
        (out / "report.geojson").write_text(json.dumps(gj))
    write_csv(out / "segments.csv", segs)
    chart(out / "condition.png", segs)
    thumbs = thumbnails(out / "thumbs", frames)
    page(out / "index.html", gj, segs, thumbs, notes)

"""Build the bundled demo clip from a handful of CrackForest *test* photos.

Test photos, so the demo shows the model on pavement it was not trained on.  Each photo
is shown for a moment with a slow pan, as a camera on a moving vehicle would see it.
Run from the repository root:  python tools/make_demo_clip.py ../shared/datasets/crackforest
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np

PHOTOS = 10          # photos in the clip
FRAMES_EACH = 6      # frames per photo
FPS = 10
SIZE = (480, 320)    # CrackForest's own size (W, H)


def main(root: str, out: str = "edge/demo/crackforest.mp4") -> None:
    root_p = Path(root)
    names = json.loads((root_p / "split.json").read_text())["test"][:PHOTOS]
    writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    if not writer.isOpened():
        sys.exit(f"cannot write {out}")
    for name in names:
        img = cv2.imread(str(root_p / "images" / f"{name}.jpg"))
        if img is None:
            sys.exit(f"{root_p / 'images' / (name + '.jpg')}: unreadable")
        img = cv2.resize(img, SIZE)
        for k in range(FRAMES_EACH):
            # A pan of a few pixels per frame: consecutive frames differ like a moving camera's.
            shift = np.float32([[1, 0, 0], [0, 1, -2.0 * k]])
            writer.write(cv2.warpAffine(img, shift, SIZE, borderMode=cv2.BORDER_REFLECT))
    writer.release()
    print(f"wrote {out}: {len(names) * FRAMES_EACH} frames at {FPS} fps from {', '.join(names)}")


if __name__ == "__main__":
    main(*sys.argv[1:])

"""`crack-viewer report`: recordings with positions -> segments, GeoJSON, CSV, PNG chart, offline HTML.

One module per job: load (records -> frames), track (chainage, local ENU), ground (cracks on
the road in world coordinates), dedup (one crack seen by several frames counted once),
segments (figures and condition per stretch), outputs (files), cli (the command).
"""

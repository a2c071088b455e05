"""The console at `/`: a server-rendered page (page.py) made live by console.js and the vendored uPlot
(static/), drawing from the query API (gpumon/query_api.py)."""

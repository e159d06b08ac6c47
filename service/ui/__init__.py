"""The dashboard at /ui: static pages of our own that call the JSON API from the browser, with
plotly's bundle served from the installed `plotly` package, and a self-contained export."""

"""Page-building pieces shared by the pages in ``views/``: the sidebar and cached core objects (``ui``),
score display helpers (``display``) and drawing helpers."""

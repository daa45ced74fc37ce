"""fastrnn's benchmark suite: the case grid (`cases`), the side-by-side runner (`runner`),
the Markdown/PNG report (`report`) and the CLI (`python -m fastrnn.bench`).

Nothing here is imported by `import fastrnn`; it needs tqdm and matplotlib only when run.
"""

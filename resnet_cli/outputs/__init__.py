"""What a run writes: output formats, where a run may write, embeddings files, overlays, the HTML
report, --resume."""

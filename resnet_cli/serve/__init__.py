"""The HTTP server (`resnet-classify serve`): app.py (the FastAPI application), batching.py (the model thread's
dynamic batches), metrics.py (Prometheus), model.py (the network, loaded once), server.py (uvicorn and the
signals), ray_serve.py (the same application on Ray Serve), page.html (the page at /). docs/serve.md."""

"""What the tests share beyond testkit/ (the gateway harness and the aiortc client, which
bench/ uses too): client processes and their JSON results, the interop clients (GStreamer,
ffmpeg), Chromium, and SDP helpers. Fixtures live in the conftest.py files and use these.
"""

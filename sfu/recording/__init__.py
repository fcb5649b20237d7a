"""Recording every publisher track to a playable file: the recorder (a tap on each track's
forwarder and a writer thread), the container per codec, and the files with their sidecars
and crash repair."""

#!/bin/sh
# hiveagent, as installed by the deb/rpm: the package's own pinned Python libraries under
# /opt/hiveagent/lib, run by the system's Python 3.11 (-s: no user site; -B: /opt is read-only).
PYTHONPATH=/opt/hiveagent/lib
export PYTHONPATH
exec /usr/bin/python3.11 -s -B -m hiveagent "$@"

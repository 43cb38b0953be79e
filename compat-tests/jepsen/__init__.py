"""Fault runs with recorded client histories and checkers over them (issue 17).

`history` records what every client did and saw; `driver` runs concurrent clients through gRPC
(etcdctl) and the JSON gateway; `faults` injects one fault per run; `runner` ties one run
together. The checkers (`lincheck`, `watchcheck`, `leasecheck`, `durability`) read only a
recorded history, so they are tested on hand-made histories without any server.
"""

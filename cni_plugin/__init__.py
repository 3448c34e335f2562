"""edge-ipam-snapshot: a CNI IPAM plugin that wraps a real one and keeps pod IPs across offline restarts.

Standard library only: it ships as one executable zipapp that needs only the host's python3.
"""

"""What edgeproxy does to its host outside the proxy process: the credentials hand-over run by a root unit
(credentials.py) and the undoing of `edgeproxy install-systemd` (uninstall.py). commands/install.py lays the units
down."""

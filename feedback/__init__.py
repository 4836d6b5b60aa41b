"""The record, the loop's services, the web and the studies."""
from restoration.offline import apply_offline_default

apply_offline_default()

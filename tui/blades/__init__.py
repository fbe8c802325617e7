"""The portal's blades: Overview, Cache rules, Credentials, Activity, Upstreams."""

-- A tenant's pod-level access policy (TOML, see `tarbox_fs::policy`); NULL for none. Mounts
-- re-read it with the tenant's head, so a change applies to them within their poll interval.
ALTER TABLE tenants ADD COLUMN access_policy text;

-- Native mounts (TOML, see `tarbox_fs::native`): a tenant's own in its row, the definitions shared
-- by every tenant in `shared_settings` under 'native_mounts'. Volumes read both when they open.
ALTER TABLE tenants ADD COLUMN native_mounts text;
CREATE TABLE shared_settings (
    name text PRIMARY KEY,
    value text NOT NULL
);

-- Block stores (see tarbox_fs::store): a tenant's file data may live outside the database.
-- `data_url` is where (NULL: in `blocks.data`), fixed at creation. `reap_epoch` counts the
-- reaps of dead blocks whose objects were deleted, so a writer can tell whether an object it
-- stored before its transaction may have been deleted meanwhile.
ALTER TABLE tenants ADD COLUMN data_url text;
ALTER TABLE tenants ADD COLUMN reap_epoch bigint NOT NULL DEFAULT 0;

-- A block of an external store has no data here; when its last reference goes its row stays,
-- marked dead, until the reaper has deleted its object.
ALTER TABLE blocks ALTER COLUMN data DROP NOT NULL;
ALTER TABLE blocks ADD COLUMN dead_since timestamptz;
CREATE INDEX blocks_dead ON blocks (tenant_id, dead_since) WHERE dead_since IS NOT NULL;

-- Tarbox storage schema, version 2: checkpoints, rollback and auto-checkpoints.
--
-- A layer stops being written when a checkpoint freezes it or a switch leaves it. At that moment
-- it records when (frozen_at) and the tenant's usage (usage_bytes, usage_inodes): usage counts
-- the live tree, so switching back to the layer later restores exactly that usage.
ALTER TABLE layers
    ADD COLUMN frozen_at    bigint,
    ADD COLUMN usage_bytes  bigint,
    ADD COLUMN usage_inodes bigint;

-- Interval of automatic checkpoints in seconds; NULL = off.
ALTER TABLE tenants ADD COLUMN auto_checkpoint_secs bigint;

-- The children of a layer (drop and the layer tree ask for them).
CREATE INDEX layers_parent ON layers (tenant_id, parent);

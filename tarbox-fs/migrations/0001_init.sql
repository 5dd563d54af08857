-- Tarbox storage schema, version 1.
--
-- Every table that holds per-tenant data leads its primary key and indexes with tenant_id, so the
-- schema can later be distributed by tenant (Citus: distribution column tenant_id). There are no
-- foreign keys: they would cost a lookup per inserted row on the hot path and constrain
-- distribution; the backend keeps the rows consistent and purges a tenant table by table.
--
-- Layered tables (inodes, dentries, block_map, xattrs) carry a layer_id in their key. A reader
-- resolves a key through a chain of layers by taking the row with the largest layer_id in the
-- chain; NULL-valued rows (tombstone = true, ino IS NULL, hash IS NULL, value IS NULL) hide older
-- rows. Writes only touch rows of the head layer.
--
-- Timestamps are nanoseconds since the Unix epoch (bigint).

-- Layer ids come from one global sequence so that along any chain a child has a larger id than
-- its parent. CACHE 1 (the default) keeps them monotonic across sessions.
CREATE SEQUENCE layer_ids;

-- Directory cookies: a new binding always sorts after every earlier one, store-wide.
CREATE SEQUENCE dentry_cookies;

CREATE TABLE tenants (
    id           bigserial PRIMARY KEY,
    -- Unique also among deleted tenants that are not purged yet.
    name         text      NOT NULL UNIQUE,
    -- 0 = active, 1 = deleted.
    state        smallint  NOT NULL DEFAULT 0,
    head_layer   bigint    NOT NULL,
    block_size   integer   NOT NULL,
    compression  smallint  NOT NULL,
    quota_bytes  bigint,
    quota_inodes bigint,
    next_ino     bigint    NOT NULL,
    created_at   bigint    NOT NULL
) WITH (fillfactor = 80); -- next_ino and state updates stay HOT

-- Usage lives apart from tenants: charge() row-locks it until commit, and that lock must not
-- collide with the tenant-row locks taken by begin() (KEY SHARE) and by checkpoints (UPDATE).
CREATE TABLE tenant_usage (
    tenant_id bigint PRIMARY KEY,
    bytes     bigint NOT NULL,
    inodes    bigint NOT NULL
) WITH (fillfactor = 50); -- updated by nearly every transaction: keep updates HOT

CREATE TABLE layers (
    tenant_id   bigint NOT NULL,
    id          bigint NOT NULL DEFAULT nextval('layer_ids'),
    parent      bigint,
    -- Checkpoint name; NULL for working layers (NULLs do not collide in the unique index).
    name        text,
    description text   NOT NULL DEFAULT '',
    created_at  bigint NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, name)
);

CREATE TABLE inodes (
    tenant_id bigint   NOT NULL,
    ino       bigint   NOT NULL,
    layer_id  bigint   NOT NULL,
    -- A tombstone hides older versions; its other columns are a copy of the hidden version.
    tombstone boolean  NOT NULL DEFAULT false,
    kind      smallint NOT NULL,
    perm      integer  NOT NULL,
    uid       bigint   NOT NULL,
    gid       bigint   NOT NULL,
    nlink     bigint   NOT NULL,
    size      bigint   NOT NULL,
    atime     bigint   NOT NULL,
    mtime     bigint   NOT NULL,
    ctime     bigint   NOT NULL,
    btime     bigint   NOT NULL,
    rdev      bigint   NOT NULL,
    parent    bigint   NOT NULL,
    target    bytea    NOT NULL DEFAULT '\x',
    PRIMARY KEY (tenant_id, ino, layer_id)
) WITH (fillfactor = 80); -- attribute updates (size, times) stay HOT

CREATE TABLE dentries (
    tenant_id bigint   NOT NULL,
    parent    bigint   NOT NULL,
    name      bytea    NOT NULL,
    layer_id  bigint   NOT NULL,
    -- NULL = whiteout hiding the name in older layers.
    ino       bigint,
    -- FileType code; 0 for whiteouts.
    kind      smallint NOT NULL,
    -- Listing order; whiteouts keep 0 (they are never listed).
    cookie    bigint   NOT NULL DEFAULT nextval('dentry_cookies'),
    PRIMARY KEY (tenant_id, parent, name, layer_id)
);
-- readdir pages in cookie order per layer.
CREATE INDEX dentries_listing ON dentries (tenant_id, parent, layer_id, cookie);

CREATE TABLE block_map (
    tenant_id bigint NOT NULL,
    ino       bigint NOT NULL,
    idx       bigint NOT NULL,
    layer_id  bigint NOT NULL,
    -- NULL = hole (reads as zeros, hides older layers).
    hash      bytea,
    PRIMARY KEY (tenant_id, ino, idx, layer_id)
);

CREATE TABLE blocks (
    tenant_id  bigint  NOT NULL,
    hash       bytea   NOT NULL,
    -- Number of block_map rows (all layers) naming this block.
    refcount   bigint  NOT NULL,
    compressed boolean NOT NULL,
    data       bytea   NOT NULL,
    PRIMARY KEY (tenant_id, hash)
) WITH (fillfactor = 80); -- refcount updates stay HOT (data is TOASTed out of line)
-- Block data is usually zstd-compressed already: store it out of line but never let TOAST try to
-- pglz-compress it again.
ALTER TABLE blocks ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE xattrs (
    tenant_id bigint NOT NULL,
    ino       bigint NOT NULL,
    name      bytea  NOT NULL,
    layer_id  bigint NOT NULL,
    -- NULL = removed (hides older layers).
    value     bytea,
    PRIMARY KEY (tenant_id, ino, name, layer_id)
);

-- Engine sessions, for orphan reclamation. Not per tenant (a reference table under Citus).
CREATE TABLE sessions (
    id          bigserial PRIMARY KEY,
    description text    NOT NULL,
    heartbeat   bigint  NOT NULL,
    closed      boolean NOT NULL DEFAULT false
);

CREATE TABLE orphans (
    tenant_id  bigint NOT NULL,
    ino        bigint NOT NULL,
    session_id bigint NOT NULL,
    PRIMARY KEY (tenant_id, ino)
);

-- Opening step of every file-operation transaction, run by the backend as
--   SELECT tarbox_begin(tenant, head, keys); BEGIN
-- in one simple-protocol message: the function runs in the implicit transaction that the BEGIN
-- then turns into a regular transaction block, so its locks are held until COMMIT or ROLLBACK,
-- and the whole opening costs one round trip. When it raises, the implicit transaction is rolled
-- back and the connection is left idle (not in a failed transaction block).
--
-- p_keys must be sorted (a global order, so lock waits cannot deadlock). The tenant row is taken
-- FOR KEY SHARE after the inode locks: the head check then sees the newest head, and a checkpoint
-- (which takes the row FOR UPDATE) waits for every transaction writing through the old head.
--
-- Errors: TB001 = stale view (head moved), TB002 = tenant missing or deleted.
CREATE FUNCTION tarbox_begin(p_tenant bigint, p_head bigint, p_keys bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    k      bigint;
    v_state smallint;
    v_head bigint;
BEGIN
    FOREACH k IN ARRAY p_keys LOOP
        PERFORM pg_advisory_xact_lock(k);
    END LOOP;
    SELECT state, head_layer INTO v_state, v_head FROM tenants WHERE id = p_tenant FOR KEY SHARE;
    IF NOT FOUND OR v_state <> 0 THEN
        RAISE EXCEPTION 'tarbox: tenant % is gone', p_tenant USING ERRCODE = 'TB002';
    END IF;
    IF v_head <> p_head THEN
        RAISE EXCEPTION 'tarbox: tenant % head moved from % to %', p_tenant, p_head, v_head
            USING ERRCODE = 'TB001';
    END IF;
END
$$;

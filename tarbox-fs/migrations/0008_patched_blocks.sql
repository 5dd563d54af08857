-- Patched blocks (see tarbox-fs/src/engine/patched.rs): a block written in part is stored as a
-- manifest naming the block it was written over and the ranges written since, each a block of
-- its own. `parts` lists the blocks a manifest names (concatenated 32-byte hashes, each as
-- often as named; NULL for a plain block); the manifest's row holds one reference to each
-- while it exists. Manifests always keep their bytes in `data`, also for tenants whose blocks
-- live in a block store.
ALTER TABLE blocks ADD COLUMN parts bytea;

-- Release blocks whose count reached zero (at the commit of a file operation, or a dropped
-- layer): rows holding their bytes go at once, rows of store blocks stay, dead, for the reaper.
-- A patched block that goes releases its parts, which may go in turn.
CREATE FUNCTION tarbox_release_blocks(t bigint, released bytea[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    named bytea[];
BEGIN
    WHILE released IS NOT NULL AND cardinality(released) > 0 LOOP
        WITH gone AS (
            DELETE FROM blocks
            WHERE tenant_id = t AND hash = ANY(released) AND refcount <= 0 AND data IS NOT NULL
            RETURNING parts)
        SELECT array_agg(substring(g.parts FROM i * 32 + 1 FOR 32)) INTO named
        FROM gone g, generate_series(0, length(g.parts) / 32 - 1) AS i
        WHERE g.parts IS NOT NULL;
        UPDATE blocks SET dead_since = now()
        WHERE tenant_id = t AND hash = ANY(released) AND refcount <= 0 AND data IS NULL
          AND dead_since IS NULL;
        IF named IS NULL THEN
            RETURN;
        END IF;
        WITH n AS (SELECT h, count(*) AS c FROM unnest(named) AS h GROUP BY h),
             dec AS (
                UPDATE blocks b SET refcount = b.refcount - n.c FROM n
                WHERE b.tenant_id = t AND b.hash = n.h
                RETURNING b.hash, b.refcount)
        SELECT array_agg(hash) INTO released FROM dec WHERE refcount <= 0;
    END LOOP;
END $$;

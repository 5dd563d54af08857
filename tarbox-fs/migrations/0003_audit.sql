-- Tarbox storage schema, version 3: the audit trail.
--
-- One row per audited operation, partitioned by time (one partition per UTC day, named
-- audit_events_YYYYMMDD). Engines create partitions ahead of time and on demand through
-- tarbox_audit_partition(), so an insert never fails for lack of one; retention drops whole
-- partitions. Times are nanoseconds since the Unix epoch, like every other timestamp here.
CREATE SEQUENCE audit_seq;

CREATE TABLE audit_events (
    seq                 bigint  NOT NULL DEFAULT nextval('audit_seq'),
    at_ns               bigint  NOT NULL,
    tenant_id           bigint  NOT NULL,
    -- Kept with the event: the record stays readable after the tenant is purged.
    tenant_name         text    NOT NULL,
    layer_id            bigint  NOT NULL,
    op                  text    NOT NULL,
    path                text,
    path2               text,
    ino                 bigint,
    off                 bigint,
    bytes               bigint  NOT NULL,
    duration_us         bigint  NOT NULL,
    errno               integer NOT NULL,
    uid                 bigint  NOT NULL,
    gid                 bigint  NOT NULL,
    pid                 bigint  NOT NULL,
    process             text,
    node                text    NOT NULL,
    mount               text    NOT NULL,
    pod_namespace       text,
    pod_name            text,
    pod_service_account text,
    -- Counters of a closed handle (op = 'close').
    reads               bigint,
    writes              bigint,
    bytes_read          bigint,
    bytes_written       bigint,
    detail              text
) PARTITION BY RANGE (at_ns);

-- Queries filter by tenant and time, and follow a stream by sequence number.
CREATE INDEX audit_events_tenant_time ON audit_events (tenant_name, at_ns);
CREATE INDEX audit_events_seq ON audit_events (seq);

-- Create the partition holding instant p_start (ns) if it is missing. Safe to race: a concurrent
-- creation by another engine is not an error.
CREATE FUNCTION tarbox_audit_partition(p_start bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_day   bigint := p_start - mod(mod(p_start, 86400000000000) + 86400000000000, 86400000000000);
    v_name  text   := 'audit_events_' || to_char(to_timestamp(v_day / 1000000000) AT TIME ZONE 'UTC', 'YYYYMMDD');
BEGIN
    IF to_regclass(v_name) IS NOT NULL THEN
        RETURN;
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF audit_events FOR VALUES FROM (%s) TO (%s)',
                   v_name, v_day, v_day + 86400000000000);
EXCEPTION
    WHEN duplicate_table THEN NULL;
END;
$$;

-- Per-tenant audit settings; NULL = the engine's default.
ALTER TABLE tenants
    ADD COLUMN audit_level          smallint,
    ADD COLUMN audit_retention_days integer;

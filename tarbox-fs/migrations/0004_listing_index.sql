-- Tarbox storage schema, version 4: name lookups must use the primary key.
--
-- The statements run with generic plans (plan_cache_mode = force_generic_plan). For a lookup by
-- (tenant_id, parent, name, layer_id) the generic estimate of the listing index on
-- (tenant_id, parent, layer_id, cookie) ties with the primary key's, and the planner picked the
-- listing index and filtered on the name: every lookup, create, rename and unlink read the whole
-- directory. The listing index now covers live entries only (every listing asks for
-- `ino IS NOT NULL`), so a lookup, which must also see whiteouts, cannot use it.
DROP INDEX dentries_listing;
CREATE INDEX dentries_listing ON dentries (tenant_id, parent, layer_id, cookie)
    WHERE ino IS NOT NULL;

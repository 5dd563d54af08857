-- What a tenant belongs to outside Tarbox (e.g. `pvc:<namespace>/<name>` for a Kubernetes
-- volume), fixed at creation, so a name that two owners would map to is never handed to the second.
ALTER TABLE tenants ADD COLUMN owner text;

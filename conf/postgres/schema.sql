-- fastreg's PostgreSQL schema: the tables the default queries of
-- conf/fastreg-postgres.toml use. Create it with
--     fastreg db init -c conf/fastreg-postgres.toml
-- (or psql -f conf/postgres/schema.sql). Tables go into the first schema of
-- the connection's search_path; every statement can run again safely.

-- Users, as in Yate's register.conf examples: username and password, or the
-- digests instead of the password (ha1 = md5("username:realm:password"),
-- ha1_sha256 = sha256 of the same). Other columns returned by user_auth
-- (maxcalls here) become the user's settings. inuse is the line tracker's
-- count of ongoing calls (linetracker_* queries).
CREATE TABLE IF NOT EXISTS users (
    username    text PRIMARY KEY,
    password    text,
    ha1         text CHECK (ha1 IS NULL OR ha1 ~ '^[0-9a-f]{32}$'),
    ha1_sha256  text CHECK (ha1_sha256 IS NULL OR ha1_sha256 ~ '^[0-9a-f]{64}$'),
    maxcalls    integer,
    inuse       integer NOT NULL DEFAULT 0
);

-- A mirror of the location table (user_register / user_unregister), for
-- operators' own tools. fastreg routes from its LMDB table, never from this
-- one; rows whose expires_at has passed are bindings that expired.
CREATE TABLE IF NOT EXISTS registrations (
    aor          text NOT NULL,
    contact      text NOT NULL,
    username     text,
    expires_at   timestamptz NOT NULL,
    call_id      text,
    cseq         bigint,
    address      text,
    transport    text,
    user_agent   text,
    instance_id  text,
    reg_id       bigint,
    path         text,
    q            double precision,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aor, contact)
);
CREATE INDEX IF NOT EXISTS registrations_username ON registrations (username);

-- Extra targets for a called number (call_route), e.g. call forwarding:
-- lowest priority first.
CREATE TABLE IF NOT EXISTS routes (
    called    text NOT NULL,
    target    text NOT NULL,
    priority  integer NOT NULL DEFAULT 0,
    PRIMARY KEY (called, target)
);

-- Call detail records (cdr_initialize / cdr_update / cdr_finalize).
CREATE TABLE IF NOT EXISTS cdr (
    id           bigserial PRIMARY KEY,
    call_id      text NOT NULL,
    caller       text,
    called       text,
    callee       text,
    contact      text,
    address      text,
    started_at   timestamptz NOT NULL,
    answered_at  timestamptz,
    ended_at     timestamptz,
    duration     double precision,
    status       integer,
    reason       text
);
CREATE INDEX IF NOT EXISTS cdr_call_id ON cdr (call_id);

-- A change to a user reaches fastreg at once: with postgres.notify_channel =
-- "fastreg_users", every worker drops the user from its cache when this
-- trigger notifies (otherwise the change applies within auth_cache_ttl_s).
CREATE OR REPLACE FUNCTION fastreg_users_changed() RETURNS trigger AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM pg_notify('fastreg_users', OLD.username);
    END IF;
    IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW.username <> OLD.username) THEN
        PERFORM pg_notify('fastreg_users', NEW.username);  -- a user that did not exist may be cached as unknown
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER fastreg_users_changed
    AFTER INSERT OR UPDATE OF username, password, ha1, ha1_sha256, maxcalls OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION fastreg_users_changed();

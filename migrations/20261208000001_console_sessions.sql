-- Admin console sessions: an API key exchanged for a cookie. Only the
-- SHA-256 of the cookie's token is stored; the session works while its key
-- does (revoking the key ends its sessions) and until it expires or signs out.
CREATE TABLE console_sessions (
    token_hash   bytea PRIMARY KEY,
    api_key_id   uuid NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    -- Sent back in every form; a POST without it is refused.
    csrf_token   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    ended_at     timestamptz,
    user_agent   text
);
CREATE INDEX console_sessions_expiry_idx ON console_sessions (expires_at);

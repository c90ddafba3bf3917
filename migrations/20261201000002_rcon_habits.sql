-- How each game server frames its RCON answers, how long its answers may
-- pause, which answers mean "refused", and what lists its players.

ALTER TABLE game_servers
    ADD COLUMN framing        text NOT NULL DEFAULT 'auto' CHECK (framing IN ('auto', 'exec_only', 'exec_quiet', 'sentinel')),
    ADD COLUMN quiet_ms       integer NOT NULL DEFAULT 500 CHECK (quiet_ms BETWEEN 20 AND 10000),
    ADD COLUMN error_patterns text[] NOT NULL DEFAULT '{}',
    ADD COLUMN online_command text;

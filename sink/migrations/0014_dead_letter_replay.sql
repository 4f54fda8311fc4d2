-- Replays of dead letters (`xoflow replay`, docs/collectors.md "Replaying
-- dead letters"): each dead letter replayed is marked, so that no later
-- replay sends it again. `replay_outcome`: '' (never replayed), `accepted`
-- (ingest took the fixed record: it is in `events` once the pipeline has
-- carried it), `refused` (refused again: a new dead letter says why),
-- `unreplayable` (no event could be read from its payload); `replayed_at`
-- NULL until then. Works on
-- ClickHouse 18.16 and current releases; the marks are mutations.
ALTER TABLE {db}.dead_letters
    ADD COLUMN replay_outcome String DEFAULT '',
    ADD COLUMN replayed_at Nullable(DateTime),
    ADD COLUMN replay_id String DEFAULT '';

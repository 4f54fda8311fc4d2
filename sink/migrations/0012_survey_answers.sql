-- Every survey answer queryable: one row per answer in `survey_answers`,
-- not only the first NPS, CSAT and CES answers that became columns of
-- `events` (the "why" drivers, custom ratings, text answers). Works on
-- ClickHouse 18.16 and current releases.
--
-- The sink writes a survey's answers into `events` as parallel arrays (as
-- it does the attributes; 18.16 has no Nested-friendly Map, and no
-- Nullable inside these arrays: `answer_has_score` says which scores are
-- real), and a materialized view turns them into rows. The view reads
-- revision 0 only, which the sink stores exactly once (docs/clickhouse.md,
-- "Exactly once"): `survey_answers` gets each answer once, with the same
-- guarantee and the same limits as the aggregates. Rows stored before this
-- migration carry no arrays and give no answers.
ALTER TABLE {db}.events
    ADD COLUMN answer_question_ids Array(String),
    ADD COLUMN answer_kinds Array(Enum8('unspecified' = 0, 'nps' = 1, 'csat' = 2, 'ces' = 3, 'other' = 4)),
    ADD COLUMN answer_scores Array(Float64),
    ADD COLUMN answer_has_score Array(UInt8),
    ADD COLUMN answer_scale_min Array(Int32),
    ADD COLUMN answer_scale_max Array(Int32),
    ADD COLUMN answer_texts Array(String);

-- One row per answer. `score` on the native scale (`scale_min`-`scale_max`),
-- `normalised` in [0, 1] over it (NPS 7 → 0.7, CSAT 4 of 1-5 → 0.75), both
-- NULL for a text-only answer; `text` masked by ingest like every free
-- text. No customer column: join `events_latest` on (tenant, event_id) for
-- the customer as last resolved. ReplacingMergeTree only as a backstop, as
-- for `events`. (`inserted_at` is written by the view too: 18.16 fills
-- no column default when a materialized view inserts.)
CREATE TABLE IF NOT EXISTS {db}.survey_answers
(
    tenant          String,
    event_id        String,
    survey_id       String,
    occurred_at     DateTime,
    utc_offset_s    Int32,
    occurred_local  DateTime('UTC'),
    journey         String,
    stage           String,
    touchpoint      String,
    channel         Enum8('unspecified' = 0, 'app' = 1, 'web' = 2, 'store' = 3, 'call_centre' = 4, 'social' = 5, 'email' = 6, 'sms' = 7),
    store_id        String,
    region          String,
    language        String,
    answer_index    UInt16,
    question_id     String,
    kind            Enum8('unspecified' = 0, 'nps' = 1, 'csat' = 2, 'ces' = 3, 'other' = 4),
    score           Nullable(Float64),
    scale_min       Int32,
    scale_max       Int32,
    normalised      Nullable(Float64),
    text            String,
    inserted_at     DateTime DEFAULT now()
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (tenant, survey_id, question_id, occurred_at, event_id, answer_index);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.survey_answers_mv TO {db}.survey_answers AS
SELECT
    tenant, event_id, survey_id, occurred_at, utc_offset_s,
    toDateTime(toUInt32(occurred_at) + utc_offset_s, 'UTC') AS occurred_local,
    journey, stage, touchpoint, channel, store_id, region, language,
    toUInt16(a_index - 1) AS answer_index,
    a_question AS question_id,
    a_kind AS kind,
    if(a_has = 1, a_score, NULL) AS score,
    a_min AS scale_min,
    a_max AS scale_max,
    if(a_has = 1 AND a_max > a_min, (a_score - a_min) / (a_max - a_min), NULL) AS normalised,
    a_text AS text,
    now() AS inserted_at
FROM {db}.events
ARRAY JOIN
    answer_question_ids AS a_question,
    answer_kinds AS a_kind,
    answer_scores AS a_score,
    answer_has_score AS a_has,
    answer_scale_min AS a_min,
    answer_scale_max AS a_max,
    answer_texts AS a_text,
    arrayEnumerate(answer_question_ids) AS a_index
WHERE revision = 0;

-- events_latest again: on 18.16 a view's columns are fixed when it is
-- created.
DROP TABLE IF EXISTS {db}.events_latest;

CREATE VIEW IF NOT EXISTS {db}.events_latest AS
SELECT *
FROM {db}.events FINAL
WHERE (tenant, event_id, revision) GLOBAL NOT IN
(
    SELECT tenant, event_id, arrayJoin(range(latest)) AS superseded
    FROM
    (
        SELECT tenant, event_id, max(revision) AS latest
        FROM {db}.events
        WHERE revision > 0
        GROUP BY tenant, event_id
    )
);

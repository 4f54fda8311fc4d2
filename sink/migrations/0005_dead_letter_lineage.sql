-- Where each dead letter was read from, so the sink can find its stored
-- position in ClickHouse itself (see docs/clickhouse.md, "Exactly once").
ALTER TABLE {db}.dead_letters
    ADD COLUMN kafka_topic String DEFAULT '',
    ADD COLUMN kafka_partition Int32 DEFAULT 0,
    ADD COLUMN kafka_offset Int64 DEFAULT -1;

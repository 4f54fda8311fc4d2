-- Marks the dead letters that are rows ClickHouse refused for `events`.
-- They keep the enriched topic's lineage and count towards that topic's
-- stored position (see docs/clickhouse.md, "Rows ClickHouse refuses").
ALTER TABLE {db}.dead_letters
    ADD COLUMN refused UInt8 DEFAULT 0;

-- Applied only where the server has DateTime64 and Map (ClickHouse 20.x and
-- later; the runner checks system.data_type_families and skips it on 18.16,
-- applying it on the first migrate after an upgrade). Computed columns:
-- nothing is stored and the sink writes nothing new.
--
-- occurred_time: the event time with its milliseconds, in UTC, for BI tools
-- that want one timestamp column. attrs: the event's attributes as a map
-- (attrs['utm_source']) instead of two parallel arrays.
ALTER TABLE {db}.events
    ADD COLUMN occurred_time DateTime64(3, 'UTC') ALIAS fromUnixTimestamp64Milli(occurred_ms, 'UTC');

ALTER TABLE {db}.events
    ADD COLUMN attrs Map(String, String) ALIAS mapFromArrays(attr_keys, attr_values);

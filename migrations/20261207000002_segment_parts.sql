-- A day segment's snapshot is stored in parts of a few MiB (engine/segment/snapshot.rs,
-- PART_BYTES), written and read one part at a time: persisting a day of a 10 M-conversation
-- tenant (74 MB) used to hold its body three times at once (the encoded body, the statement's
-- arguments and the connection's buffer), about 220 MiB beyond the query cache's entries
-- (BENCHMARKS.md, "10 M conversations", session 26). `segments` keeps what the snapshot is of.
create table segment_parts (
    tenant_id   bigint  not null,
    segment_day date    not null,
    -- 0, 1, ...: the body is the parts' bytes in this order.
    part        integer not null check (part >= 0),
    body        bytea   not null,
    primary key (tenant_id, segment_day, part),
    foreign key (tenant_id, segment_day) references segments (tenant_id, segment_day) on delete cascade
);

-- Already compact bytes: out of line, uncompressed (as segments.body was).
alter table segment_parts alter column body set storage external;

insert into segment_parts (tenant_id, segment_day, part, body)
    select tenant_id, segment_day, 0, body from segments;
alter table segments drop column body;
-- A dropped column's values stay with the row versions that hold them: write every row again,
-- so that vacuum frees the bodies just copied.
update segments set written_at = written_at;

comment on table segment_parts is
    'Persisted day segments of the query engine, in parts written and read one at a time: derived '
    'data, deleted with their segments row.';

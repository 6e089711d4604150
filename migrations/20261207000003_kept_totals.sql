-- Kept totals of a day, persisted beside the day's snapshot (engine/kpi/stored.rs): a restarted
-- replica reads a settled day's totals for the questions asked before instead of computing them
-- from the day's rows (4-5 s per question at 10 M conversations, BENCHMARKS.md). Derived data:
-- deleting a row loses nothing. A row is of exactly one snapshot of its day (`snapshot_xmin`),
-- and goes with it: replaced when the snapshot is, deleted with its `segments` row.
create table kept_totals (
    tenant_id     bigint      not null,
    segment_day   date        not null,
    -- SHA-256 of the question shape (everything about the question but its window, by name);
    -- the shape itself is in the body.
    shape_hash    bytea       not null,
    -- 0: rows ending inside the window, of a day that begins inside it; 1: rows ending before
    -- the window, of a day opened in the window before (engine/kpi/partial.rs, KeptRows).
    kind          smallint    not null check (kind in (0, 1)),
    -- The segments.built_xmin of the snapshot the totals are of.
    snapshot_xmin xid8        not null,
    body          bytea       not null,
    written_at    timestamptz not null default now(),
    primary key (tenant_id, segment_day, shape_hash, kind),
    foreign key (tenant_id, segment_day) references segments (tenant_id, segment_day) on delete cascade
);

-- Already compact bytes: out of line, uncompressed, so loading one is a plain read.
alter table kept_totals alter column body set storage external;

comment on table kept_totals is
    'Kept query totals of a day segment snapshot, per question shape: derived data, at most 8 '
    'shapes per day (the most recently written), deleted with their snapshot.';

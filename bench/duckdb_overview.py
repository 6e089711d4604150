#!/usr/bin/env python3
"""DuckDB anchor of the query benchmark (not a test).

Loads a tenant's facts exported by `chatkpi-bench export-facts` into an in-memory DuckDB and
times an overview over [from, to) comparable to chatkpi's GetOverview: volume, first response,
human first response, wait, resolution, duration and reply times (count, mean, p50/p90/p95/p99
with quantile_cont), resolved, FCR with repeat contacts (ASOF join on the customer's next
conversation), reopen and automation rates, missed, abandoned, bot handoff, messages per chat,
distinct customers, CSAT, NPS and CES. It does not compute the delivery funnel, conversions,
retention, tag and channel shares, which chatkpi's overview also returns: the anchor does less
work than chatkpi.

    bench/duckdb_overview.py PREFIX FROM TO ITERATIONS [--threads 2] [--samples FILE]

FROM and TO are RFC 3339 instants. Prints the answer once and the latency percentiles; with
--samples, appends `duckdb_overview,<ms>` lines.
"""

import argparse
import datetime as dt
import math
import time

import duckdb

QUANTILES = "[0.5, 0.9, 0.95, 0.99]"

OVERVIEW = f"""
with opened as (
    select count(*) as conversations,
           count(distinct customer_id) filter (where customer_id is not null) as customers,
           avg(frt_us) as frt_mean, quantile_cont(frt_us, {QUANTILES}) as frt_q,
           avg(human_frt_us) as human_frt_mean, quantile_cont(human_frt_us, {QUANTILES}) as human_frt_q,
           avg(wait_us) as wait_mean, quantile_cont(wait_us, {QUANTILES}) as wait_q,
           count(*) filter (where customer_message = 1) as with_customer_message,
           count(*) filter (where customer_message = 1 and ended_at is not null and responded = 0) as missed,
           count(*) filter (where state = 'abandoned') as abandoned,
           count(*) filter (where bot_involved = 1) as bot_involved,
           count(*) filter (where bot_involved = 1 and human_involved = 1) as bot_and_human
    from conv where opened_at >= $from and opened_at < $to
),
resolved as (
    select count(*) as resolved,
           avg(resolution_us) as resolution_mean, quantile_cont(resolution_us, {QUANTILES}) as resolution_q,
           count(*) filter (where r.reopen_count = 0
                            and not coalesce(n.opened_at <= r.resolved_at + $repeat, false)) as fcr,
           count(*) filter (where r.reopen_count > 0) as reopened,
           count(*) filter (where r.human_involved = 0) as automated,
           count(*) filter (where r.resolved_by_bot = 1) as bot_resolutions
    from (select * from conv where resolved_at >= $from and resolved_at < $to) r
    asof left join opens n on r.customer_id = n.customer_id and n.opened_at > r.resolved_at
),
ended as (
    select count(*) as ended,
           avg(duration_us) as duration_mean, quantile_cont(duration_us, {QUANTILES}) as duration_q,
           avg(customer_messages + agent_messages + bot_messages) as messages_per_chat
    from conv where ended_at >= $from and ended_at < $to
),
replied as (
    select count(*) as replies, avg(seconds_us) as reply_mean,
           quantile_cont(seconds_us, {QUANTILES}) as reply_q
    from replies where replied_at >= $from and replied_at < $to
),
surveys as (
    select count(*) filter (where csat_at >= $from and csat_at < $to) as csat_responses,
           avg(1 + 4.0 * (csat_score - csat_min) / (csat_max - csat_min))
               filter (where csat_at >= $from and csat_at < $to) as csat_mean,
           count(*) filter (where csat_at >= $from and csat_at < $to
                            and (csat_score - csat_min) / (csat_max - csat_min) >= 0.75) as satisfied,
           count(*) filter (where nps_at >= $from and nps_at < $to) as nps_responses,
           count(*) filter (where nps_at >= $from and nps_at < $to and nps_score >= 9) as promoters,
           count(*) filter (where nps_at >= $from and nps_at < $to and nps_score <= 6) as detractors,
           avg(1 + 6.0 * (ces_score - ces_min) / (ces_max - ces_min))
               filter (where ces_at >= $from and ces_at < $to) as ces_mean
    from conv
    where (csat_at >= $from and csat_at < $to) or (nps_at >= $from and nps_at < $to)
       or (ces_at >= $from and ces_at < $to)
)
select * from opened, resolved, ended, replied, surveys
"""


def micros(text):
    return int(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1_000_000)


def nearest_rank(sorted_values, p):
    rank = max(1, min(len(sorted_values), math.ceil(p * len(sorted_values))))
    return sorted_values[rank - 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prefix")
    ap.add_argument("start")
    ap.add_argument("end")
    ap.add_argument("iterations", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples")
    ap.add_argument("--quiet", action="store_true", help="do not print the answer")
    args = ap.parse_args()

    con = duckdb.connect()
    con.execute(f"set threads = {args.threads}")
    con.execute(f"create table conv as select * from read_csv('{args.prefix}.conversations.csv', header = true)")
    con.execute(f"create table replies as select * from read_csv('{args.prefix}.replies.csv', header = true)")
    con.execute("create table opens as select customer_id, opened_at from conv where customer_id is not null")
    params = {"from": micros(args.start), "to": micros(args.end), "repeat": 7 * 86_400_000_000}

    answer = con.execute(OVERVIEW, params).fetchone()
    if not args.quiet:
        print("duckdb answer:", answer)
    times = []
    for _ in range(args.iterations):
        started = time.perf_counter()
        con.execute(OVERVIEW, params).fetchall()
        times.append((time.perf_counter() - started) * 1000.0)
    if args.samples:
        with open(args.samples, "a", encoding="utf-8") as f:
            for ms in times:
                f.write(f"duckdb_overview,{ms:.3f}\n")
    times.sort()
    print(
        f"duckdb_overview: n={len(times)} p50={nearest_rank(times, 0.5):.1f} ms "
        f"p95={nearest_rank(times, 0.95):.1f} ms max={times[-1]:.1f} ms"
    )


if __name__ == "__main__":
    main()

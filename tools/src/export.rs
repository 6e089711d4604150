//! A tenant's conversation facts as CSV files, read from the store: the input of the DuckDB
//! anchor of the query benchmark (`bench/duckdb_overview.py`).
//!
//! `<prefix>.conversations.csv` has one row per conversation (times in microseconds since the
//! epoch, durations in microseconds, empty = absent); `<prefix>.replies.csv` one row per reply.

use std::path::Path;

use anyhow::Context;
use chatkpi::domain::{
    event::{ResolvedBy, Sender, SurveyType},
    facts::ConversationFacts,
    time::micros,
};
use chatkpi::engine::record;
use sqlx::PgPool;

/// Writes the two CSV files; returns the number of conversations.
pub async fn export(pool: &PgPool, tenant: i64, prefix: &Path) -> anyhow::Result<u64> {
    let path = |suffix: &str| {
        let mut p = prefix.as_os_str().to_owned();
        p.push(suffix);
        std::path::PathBuf::from(p)
    };
    let mut conversations = csv::Writer::from_path(path(".conversations.csv"))?;
    let mut replies = csv::Writer::from_path(path(".replies.csv"))?;
    conversations.write_record([
        "conversation_id",
        "customer_id",
        "channel",
        "team",
        "agent",
        "opened_at",
        "resolved_at",
        "ended_at",
        "state",
        "reopen_count",
        "frt_us",
        "bot_first",
        "human_frt_us",
        "wait_us",
        "resolution_us",
        "duration_us",
        "customer_message",
        "responded",
        "human_involved",
        "bot_involved",
        "resolved_by_bot",
        "customer_messages",
        "agent_messages",
        "bot_messages",
        "csat_score",
        "csat_min",
        "csat_max",
        "csat_at",
        "nps_score",
        "nps_at",
        "ces_score",
        "ces_min",
        "ces_max",
        "ces_at",
    ])?;
    replies.write_record(["conversation_id", "replied_at", "seconds_us", "agent"])?;
    let mut after = String::new();
    let mut count = 0u64;
    loop {
        let page = chatkpi::store::events::records_after(
            pool,
            chatkpi::domain::tenant::TenantId(tenant),
            &after,
            10_000,
        )
        .await?;
        let Some((last, _)) = page.last() else { break };
        after = last.clone();
        for (id, bytes) in &page {
            let f = record::decode(id, bytes).with_context(|| format!("conversation {id}"))?;
            conversations.write_record(conversation_row(&f))?;
            for r in f.replies() {
                replies.write_record([
                    id.clone(),
                    micros(r.at).to_string(),
                    (micros(r.at) - micros(r.waiting_since)).to_string(),
                    r.agent_id.clone().unwrap_or_default(),
                ])?;
            }
            count += 1;
        }
    }
    conversations.flush()?;
    replies.flush()?;
    Ok(count)
}

fn conversation_row(f: &ConversationFacts) -> Vec<String> {
    let t = |x: Option<chrono::DateTime<chrono::Utc>>| x.map(|x| micros(x).to_string()).unwrap_or_default();
    let us = |s: Option<f64>| {
        s.map(|s| ((s * 1e6).round() as i64).to_string())
            .unwrap_or_default()
    };
    let flag = |b: bool| u8::from(b).to_string();
    let first = f.first_response();
    let survey = |kind: SurveyType| f.surveys.iter().find(|s| s.survey == kind);
    let (csat, nps, ces) = (
        survey(SurveyType::Csat),
        survey(SurveyType::Nps),
        survey(SurveyType::Ces),
    );
    let counted = f.messages.iter().filter(|m| m.sender != Sender::System);
    vec![
        f.conversation_id.clone(),
        f.customer_id.clone().unwrap_or_default(),
        f.channel.as_str().to_owned(),
        f.team.clone().unwrap_or_default(),
        f.agent.clone().unwrap_or_default(),
        micros(f.opened_at).to_string(),
        t(f.resolved_at),
        t(f.ended_at),
        f.state.as_str().to_owned(),
        f.reopen_count.to_string(),
        us(first.map(|r| r.seconds)),
        flag(first.is_some_and(|r| r.responder == Sender::Bot)),
        us(f.first_human_response.as_ref().map(|h| h.seconds)),
        us(f.wait_seconds),
        us(f.resolution_seconds),
        us(f.duration_seconds),
        flag(f.first_customer_message_at.is_some()),
        flag(!f.responses.is_empty()),
        flag(f.human_involved),
        flag(f.bot_involved),
        flag(f.resolved_by == Some(ResolvedBy::Bot)),
        counted
            .clone()
            .filter(|m| m.sender == Sender::Customer)
            .count()
            .to_string(),
        counted
            .clone()
            .filter(|m| m.sender == Sender::Agent)
            .count()
            .to_string(),
        counted.filter(|m| m.sender == Sender::Bot).count().to_string(),
        csat.map(|s| s.score.to_string()).unwrap_or_default(),
        csat.map(|s| s.scale.min.to_string()).unwrap_or_default(),
        csat.map(|s| s.scale.max.to_string()).unwrap_or_default(),
        t(csat.map(|s| s.at)),
        nps.map(|s| s.score.to_string()).unwrap_or_default(),
        t(nps.map(|s| s.at)),
        ces.map(|s| s.score.to_string()).unwrap_or_default(),
        ces.map(|s| s.scale.min.to_string()).unwrap_or_default(),
        ces.map(|s| s.scale.max.to_string()).unwrap_or_default(),
        t(ces.map(|s| s.at)),
    ]
}

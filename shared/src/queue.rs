//! RabbitMQ: topology, confirmed publishing, consuming.
//!
//! Topology (DESIGN.md §7), every name under `CAIRN_QUEUE_PREFIX`:
//! - `<p>.jobs`, a durable direct exchange; routing key = job kind;
//! - `<p>.backup` (kinds `backup`, `delete_backup`) and `<p>.restore`
//!   (kind `restore`), quorum queues, so they survive a node and are
//!   replicated once RabbitMQ is clustered; `x-delivery-limit` stops a
//!   message that keeps crashing its consumer from looping forever;
//! - `<p>.dead`, where rejected and over-delivered messages go, to be
//!   looked at by a person, never silently dropped;
//! - `<p>.retry.<n>s`, delay queues for job retries: a message waits there
//!   `n` seconds (`x-message-ttl`), then is dead-lettered back to
//!   `<p>.jobs` with its routing key, so a retry never spins in a hot loop.
//!
//! Messages are persistent and published with `mandatory` and publisher
//! confirms: a publish counts only once the broker has the message in a
//! queue.

use std::time::Duration;

use anyhow::{Context, bail};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind,
    options::{
        BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
        ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};

use crate::status::{JobKind, JobMessage};

/// How many times a message may be redelivered before it is dead-lettered.
const DELIVERY_LIMIT: i64 = 20;

/// The delays a retry can wait, in seconds; a delay is rounded up to one.
pub const RETRY_DELAYS: [u32; 5] = [1, 5, 30, 120, 600];

/// Names of the exchanges and queues of one deployment.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
}

impl Topology {
    /// The topology under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    /// The work exchange.
    pub fn exchange(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    /// The dead-letter exchange and queue.
    pub fn dead(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// The queue that carries `kind`.
    pub fn queue_for(&self, kind: JobKind) -> String {
        match kind {
            JobKind::Backup | JobKind::DeleteBackup | JobKind::VerifyBackup => format!("{}.backup", self.prefix),
            JobKind::Restore => format!("{}.restore", self.prefix),
        }
    }

    /// The delay exchange and queue that holds a retry for `delay_seconds`
    /// (rounded up to a tier), or `None` for no delay.
    pub fn retry_for(&self, delay_seconds: u32) -> Option<String> {
        if delay_seconds == 0 {
            return None;
        }
        let tier =
            RETRY_DELAYS.iter().copied().find(|d| *d >= delay_seconds).unwrap_or(RETRY_DELAYS[RETRY_DELAYS.len() - 1]);
        Some(format!("{}.retry.{tier}s", self.prefix))
    }

    fn retry_queues(&self) -> Vec<(String, u32)> {
        RETRY_DELAYS.iter().map(|d| (format!("{}.retry.{d}s", self.prefix), *d)).collect()
    }

    /// Every work queue, each once.
    pub fn work_queues(&self) -> Vec<String> {
        vec![self.queue_for(JobKind::Backup), self.queue_for(JobKind::Restore)]
    }

    /// Declares everything; idempotent.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel.exchange_declare(self.exchange().into(), ExchangeKind::Direct, durable, FieldTable::default()).await?;
        channel.exchange_declare(self.dead().into(), ExchangeKind::Fanout, durable, FieldTable::default()).await?;
        let queue_opts = QueueDeclareOptions { durable: true, ..Default::default() };
        let mut dead_args = FieldTable::default();
        dead_args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        channel.queue_declare(self.dead().into(), queue_opts, dead_args).await?;
        channel
            .queue_bind(
                self.dead().into(),
                self.dead().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for queue in self.work_queues() {
            let mut args = FieldTable::default();
            args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
            args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(DELIVERY_LIMIT));
            args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(self.dead().into()));
            channel.queue_declare(queue.as_str().into(), queue_opts, args).await?;
        }
        for (name, delay) in self.retry_queues() {
            channel
                .exchange_declare(name.as_str().into(), ExchangeKind::Fanout, durable, FieldTable::default())
                .await?;
            let mut args = FieldTable::default();
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(i64::from(delay) * 1000));
            args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(self.exchange().into()));
            channel.queue_declare(name.as_str().into(), queue_opts, args).await?;
            channel
                .queue_bind(
                    name.as_str().into(),
                    name.as_str().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        for kind in JobKind::ALL {
            channel
                .queue_bind(
                    self.queue_for(kind).into(),
                    self.exchange().into(),
                    kind.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Removes every exchange and queue of this prefix (tests clean up with it).
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        let retries: Vec<String> = self.retry_queues().into_iter().map(|(name, _)| name).collect();
        for queue in self.work_queues().into_iter().chain([self.dead()]).chain(retries.clone()) {
            channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await?;
        }
        for exchange in [self.exchange(), self.dead()].into_iter().chain(retries) {
            channel.exchange_delete(exchange.into(), ExchangeDeleteOptions::default()).await?;
        }
        Ok(())
    }
}

/// A connection factory for one deployment's broker.
#[derive(Debug, Clone)]
pub struct Broker {
    url: String,
    /// The deployment's names.
    pub topology: Topology,
}

impl Broker {
    /// Describes the broker at `url`; connects lazily.
    pub fn new(url: &str, prefix: &str) -> Self {
        Self { url: url.to_owned(), topology: Topology::new(prefix) }
    }

    /// Opens a connection (bounded in time) and declares the topology.
    pub async fn connect(&self) -> anyhow::Result<Connection> {
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            Connection::connect(&self.url, ConnectionProperties::default()),
        )
        .await
        .context("timed out connecting to RabbitMQ")?
        .context("cannot connect to RabbitMQ")?;
        let channel = conn.create_channel().await?;
        self.topology.declare(&channel).await.context("cannot declare the queue topology")?;
        let _ = channel.close(200, "topology declared".into()).await;
        Ok(conn)
    }

    /// A fresh publisher with confirms on its own connection.
    pub async fn publisher(&self) -> anyhow::Result<Publisher> {
        let conn = self.connect().await?;
        let channel = conn.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Publisher { _conn: conn, channel, topology: self.topology.clone() })
    }

    /// A consuming channel on `conn` with `prefetch` unacked deliveries,
    /// subscribed to every work queue.
    pub async fn consumers(
        &self,
        conn: &Connection,
        prefetch: u16,
        tag: &str,
    ) -> anyhow::Result<(Channel, Vec<Consumer>)> {
        let channel = conn.create_channel().await?;
        channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let mut consumers = Vec::new();
        for queue in self.topology.work_queues() {
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    format!("{tag}:{queue}").into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("cannot consume from {queue}"))?;
            consumers.push(consumer);
        }
        Ok((channel, consumers))
    }
}

/// Publishes job messages with confirms.
pub struct Publisher {
    _conn: Connection,
    channel: Channel,
    topology: Topology,
}

impl Publisher {
    /// False once the channel or its connection has closed.
    pub fn is_usable(&self) -> bool {
        self.channel.status().connected()
    }

    /// Publishes every message (after its delay, through a delay queue),
    /// then waits for all confirms (pipelined, not one round trip each).
    /// Fails if any is nacked or unroutable.
    pub async fn publish_all(&self, messages: &[(JobMessage, u32)]) -> anyhow::Result<()> {
        let mut confirms = Vec::with_capacity(messages.len());
        for (msg, delay) in messages {
            let exchange = self.topology.retry_for(*delay).unwrap_or_else(|| self.topology.exchange());
            let payload = serde_json::to_vec(msg)?;
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(msg.id.to_string().into());
            let confirm = self
                .channel
                .basic_publish(
                    exchange.into(),
                    msg.kind.as_str().into(),
                    BasicPublishOptions { mandatory: true, ..Default::default() },
                    &payload,
                    props,
                )
                .await?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            let confirmation = confirm.await?;
            if !confirmation.is_ack() {
                bail!("RabbitMQ refused a message (nack)");
            }
            if confirmation.take_message().is_some() {
                bail!("RabbitMQ could not route a message: is the topology declared?");
            }
        }
        Ok(())
    }
}

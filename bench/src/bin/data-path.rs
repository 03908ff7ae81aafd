//! Data-path benchmark (issue 3): not written yet.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("the data-path benchmark is not written yet")
}

//! Job-path benchmark (issue 3): not written yet.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("the job-path benchmark is not written yet")
}

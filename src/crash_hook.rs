//! Test hooks that abort the process at a named step of a multi-step file swap (compaction,
//! row deletes), so crash tests can hit every step deterministically. Unset in production.

/// A step after which a hook can abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    AfterDownload,
    AfterMerge,
    AfterJournal,
    AfterUpload,
    AfterSwap,
}

impl Step {
    pub const ALL: [Step; 5] = [
        Step::AfterDownload,
        Step::AfterMerge,
        Step::AfterJournal,
        Step::AfterUpload,
        Step::AfterSwap,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::AfterDownload => "after_download",
            Step::AfterMerge => "after_merge",
            Step::AfterJournal => "after_journal",
            Step::AfterUpload => "after_upload",
            Step::AfterSwap => "after_swap",
        }
    }
}

/// The step named by one environment variable, read once at start-up.
#[derive(Debug, Clone, Copy)]
pub struct CrashHook {
    env: &'static str,
    step: Option<Step>,
}

impl CrashHook {
    /// `env` unset or empty means no crash; an unknown step name is warned about and ignored.
    pub fn from_env(env: &'static str) -> CrashHook {
        let name = std::env::var(env).ok().filter(|n| !n.is_empty());
        let step = name.as_deref().and_then(|name| {
            let step = Step::ALL.into_iter().find(|s| s.as_str() == name);
            if step.is_none() {
                tracing::warn!(value = %name, "unknown {env}; ignored");
            }
            step
        });
        CrashHook { env, step }
    }

    /// Aborts the process (as kill -9 would end it: no destructors, no flush) at `step`.
    pub fn crash_if(&self, step: Step) {
        if self.step == Some(step) {
            tracing::error!(step = step.as_str(), hook = self.env, "test hook: aborting");
            std::process::abort();
        }
    }
}

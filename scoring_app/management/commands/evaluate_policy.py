import json

from django.core.management.base import BaseCommand, CommandError, CommandParser

from scoring_app.interface import PolicyEvaluationError, PolicyEvaluationReport, policy_evaluate_logged
from scoring_app.off_policy import Estimate
from scoring_app.policy_evaluation import DEFAULT_DAYS, DEFAULT_MAX_SLATES


class Command(BaseCommand):
    help = (
        "Estimate what a candidate ranking (a registered ranker version, or 'popularity') would have earned per "
        "slate on a placement, from the serving ranker's logged slates (off-policy: IPS, self-normalized IPS and "
        "doubly robust, with 95 percent intervals and the effective sample size)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--placement", required=True)
        parser.add_argument("--candidate", required=True, help="A ranker version, or 'popularity'.")
        parser.add_argument("--days", type=int, default=DEFAULT_DAYS)
        parser.add_argument("--max-slates", type=int, default=DEFAULT_MAX_SLATES)
        parser.add_argument("--reward", default="click", help="click (clicks per slate) or revenue.")
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")

    def handle(self, *args: object, **options: object) -> None:
        try:
            report = policy_evaluate_logged(
                placement=str(options["placement"]), candidate=str(options["candidate"]), days=int(options["days"]),
                max_slates=int(options["max_slates"]), reward=str(options["reward"]),
            )  # fmt: skip
        except PolicyEvaluationError as error:
            raise CommandError(f"--{error.field.replace('_', '-')}: {error.message}") from error
        if options["json"]:
            self.stdout.write(json.dumps(report_as_dict(report), indent=2))
            return
        estimate = report.estimate
        self.stdout.write(
            f"{report.placement}: {report.candidate} on {estimate.slates} logged slates "
            f"({estimate.impressions} impressions; {report.slates_skipped} left out), reward {report.reward}"
        )
        self.stdout.write(f"  logged value      {estimate.logged_value:.4f} per slate")
        for name, value in (("IPS", estimate.ips), ("SNIPS", estimate.snips), ("DR", estimate.dr)):
            self.stdout.write(f"  {name:<17} {value.value:.4f}  [{value.low:.4f}, {value.high:.4f}]")
        self.stdout.write(f"  effective sample  {estimate.effective_sample_size:.1f} slates")
        for warning in report.warnings:
            self.stderr.write(f"warning: {warning}")


def report_as_dict(report: PolicyEvaluationReport) -> dict[str, object]:
    estimate = report.estimate

    def interval(value: Estimate) -> dict[str, float]:
        return {"value": value.value, "low": value.low, "high": value.high}

    return {
        "placement": report.placement,
        "candidate": report.candidate,
        "reward": report.reward,
        "since": report.since.isoformat(),
        "until": report.until.isoformat(),
        "slates": estimate.slates,
        "slates_skipped": report.slates_skipped,
        "impressions": estimate.impressions,
        "logging_versions": report.logging_versions,
        "policy": {
            "share": report.policy.share, "temperature": report.policy.temperature, "pool": report.policy.pool,
        },
        "logged_value": estimate.logged_value,
        "ips": interval(estimate.ips),
        "snips": interval(estimate.snips),
        "dr": interval(estimate.dr),
        "effective_sample_size": estimate.effective_sample_size,
        "warnings": report.warnings,
    }  # fmt: skip

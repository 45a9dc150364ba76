"""A small client for the Dagster webserver's GraphQL API, authenticated with the admin API key.

It raises :class:`DagsterUnreachable` when the webserver cannot be reached or answers 5xx (the
caller leaves the request pending for ``admin_trigger_sensor``), and :class:`DagsterRejected`
when Dagster answers but refuses (401, GraphQL or launch errors).
"""

from __future__ import annotations

import httpx

from heatmap_pipeline.orchestration import (
    API_KEY_HEADER, CLAIM_TAG, GAME_EVENTS, IN_FLIGHT_NAMES, PARTITION_TAG, failure_summary,
)


_REPOSITORIES = """
query HeatmapPipelineRepositories {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection { nodes { name location { name } pipelines { name } } }
    ... on Error { message }
  }
}"""

_LAUNCH = """
mutation HeatmapPipelineLaunch($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""

_RUNS = """
query HeatmapPipelineRuns($filter: RunsFilter!, $limit: Int) {
  runsOrError(filter: $filter, limit: $limit) {
    __typename
    ... on Runs { results { runId status } }
    ... on Error { message }
  }
}"""

# The partition statuses the UI shows; for daily partitions Dagster answers with ranges whose
# statuses are already flattened (materializing > failed > materialized).
_PARTITION_STATUSES = """
query HeatmapPipelinePartitionStatuses($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    __typename
    ... on AssetNode {
      assetPartitionStatuses {
        __typename
        ... on TimePartitionStatuses { ranges { startKey endKey status } }
        ... on DefaultPartitionStatuses { materializedPartitions failedPartitions materializingPartitions }
      }
    }
    ... on Error { message }
  }
}"""

_RUN_FAILURE = """
query HeatmapPipelineRunFailure($runId: ID!, $cursor: String) {
  logsForRun(runId: $runId, afterCursor: $cursor) {
    __typename
    ... on EventConnection {
      cursor hasMore
      events {
        __typename
        ... on ExecutionStepFailureEvent { stepKey message error { message } failureMetadata { description } }
        ... on RunFailureEvent { message }
      }
    }
    ... on Error { message }
  }
}"""
_MAX_LOG_PAGES = 50


class DagsterUnreachable(RuntimeError):
    pass


class DagsterRejected(RuntimeError):
    pass


class DagsterGraphQL:
    def __init__(self, url: str, api_key: str | None, timeout: float = 10.0):
        self.url = url
        headers = {API_KEY_HEADER: api_key} if api_key else {}
        self._http = httpx.Client(headers=headers, timeout=timeout)
        self._job_locations: dict[str, tuple[str, str]] = {}

    @property
    def ui_url(self) -> str:
        return self.url.rsplit("/graphql", 1)[0]

    def close(self) -> None:
        self._http.close()

    def execute(self, query: str, variables: dict | None = None) -> dict:
        try:
            response = self._http.post(self.url, json={"query": query, "variables": variables or {}})
        except httpx.HTTPError as exc:
            raise DagsterUnreachable(f"Dagster webserver at {self.url} unreachable: {type(exc).__name__}") from None
        if response.status_code >= 500:
            raise DagsterUnreachable(f"Dagster webserver at {self.url} answered HTTP {response.status_code}")
        if response.status_code == 401:
            raise DagsterRejected(f"Dagster webserver at {self.url} refused the admin API key (HTTP 401); "
                                  "the admin API and the webserver must share ADMIN_API_KEY")
        if response.status_code != 200:
            raise DagsterRejected(f"Dagster webserver at {self.url} answered HTTP {response.status_code}")
        body = response.json()
        if body.get("errors"):
            raise DagsterRejected(f"GraphQL error: {body['errors'][0].get('message')}")
        return body["data"]

    def _location_of(self, job_name: str) -> tuple[str, str]:
        if job_name not in self._job_locations:
            data = self.execute(_REPOSITORIES)["repositoriesOrError"]
            if data["__typename"] != "RepositoryConnection":
                raise DagsterRejected(f"cannot list code locations: {data.get('message')}")
            for repo in data["nodes"]:
                for job in repo["pipelines"]:
                    self._job_locations.setdefault(job["name"], (repo["location"]["name"], repo["name"]))
            if job_name not in self._job_locations:
                raise DagsterRejected(f"job {job_name} is not in any code location loaded by {self.ui_url}")
        return self._job_locations[job_name]

    def launch_run(self, job_name: str, tags: dict[str, str]) -> str:
        location, repository = self._location_of(job_name)
        params = {
            "selector": {"repositoryLocationName": location, "repositoryName": repository, "jobName": job_name},
            "runConfigData": {},
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
        }
        result = self.execute(_LAUNCH, {"executionParams": params})["launchRun"]
        if result["__typename"] == "LaunchRunSuccess":
            return result["run"]["runId"]
        detail = result.get("message") or "; ".join(e["message"] for e in result.get("errors", [])) or result["__typename"]
        raise DagsterRejected(f"launching {job_name} failed: {result['__typename']}: {detail}")

    def _runs(self, run_filter: dict, limit: int | None = None) -> list[dict]:
        data = self.execute(_RUNS, {"filter": run_filter, "limit": limit})["runsOrError"]
        if data["__typename"] != "Runs":
            raise DagsterRejected(f"cannot read runs: {data.get('message')}")
        return data["results"]

    def run_statuses(self, run_ids: list[str]) -> dict[str, str]:
        if not run_ids:
            return {}
        return {run["runId"]: run["status"] for run in self._runs({"runIds": run_ids})}

    def in_flight_run(self, job_name: str, partition_key: str) -> str | None:
        """A queued or running run of this job and partition, which a new request should share."""
        runs = self._runs(
            {"pipelineName": job_name, "tags": [{"key": PARTITION_TAG, "value": partition_key}],
             "statuses": list(IN_FLIGHT_NAMES)},
            limit=1,
        )
        return runs[0]["runId"] if runs else None

    def claimed_run(self, claim: str, run_id: str | None) -> tuple[str, bool] | None:
        """(run id, still in flight) of the run a run_claims row names (orchestration.claimed_run, through GraphQL)."""
        run_filter = {"runIds": [run_id]} if run_id else {"tags": [{"key": CLAIM_TAG, "value": claim}]}
        runs = self._runs(run_filter, limit=1)
        return (runs[0]["runId"], runs[0]["status"] in IN_FLIGHT_NAMES) if runs else None

    def game_events_status(self, day: str) -> str | None:
        """The status of game_events partition ``day`` as the UI shows it: MATERIALIZED, FAILED,
        MATERIALIZING, or None (never materialized). Read by orchestration.etl_needed_because."""
        data = self.execute(_PARTITION_STATUSES, {"assetKey": {"path": GAME_EVENTS.path}})["assetNodeOrError"]
        if data["__typename"] != "AssetNode":
            raise DagsterRejected(f"cannot read the partitions of game_events: {data.get('message') or data['__typename']}")
        statuses = data["assetPartitionStatuses"]
        if statuses["__typename"] == "TimePartitionStatuses":
            # Daily keys are ISO dates, so they compare as strings.
            for status_range in statuses["ranges"]:
                if status_range["startKey"] <= day <= status_range["endKey"]:
                    return status_range["status"]
            return None
        for status, field in (("MATERIALIZING", "materializingPartitions"), ("FAILED", "failedPartitions"),
                              ("MATERIALIZED", "materializedPartitions")):
            if day in (statuses.get(field) or []):
                return status
        return None

    def run_failure_reason(self, run_id: str) -> str | None:
        """What made the run fail, from its failed steps' messages (orchestration.failure_summary)."""
        steps, run_message, cursor = {}, None, None
        for _ in range(_MAX_LOG_PAGES):
            data = self.execute(_RUN_FAILURE, {"runId": run_id, "cursor": cursor})["logsForRun"]
            if data["__typename"] != "EventConnection":
                return None
            for event in data["events"]:
                if event["__typename"] == "ExecutionStepFailureEvent":
                    description = (event.get("failureMetadata") or {}).get("description")
                    steps[event["stepKey"]] = description or (event.get("error") or {}).get("message") or event["message"]
                elif event["__typename"] == "RunFailureEvent":
                    run_message = event["message"]
            if not data["hasMore"]:
                break
            cursor = data["cursor"]
        return failure_summary(steps, run_message)

# Plans the module with the compactor on (the AWS provider, no credentials: the calls that
# would need them are overridden) and checks what the settings become, and that bad settings
# are refused at plan time. deploy-tests/test_terraform.py runs it with
# -var indexer_zip_path=<an empty file>; by hand: terraform init -plugin-dir=<mirror> &&
# terraform test -var indexer_zip_path=/path/to/bootstrap.zip
# (The IAM policy document is read at apply, after the queue exists, so its statements are
# checked structurally in test_terraform.py instead.)

provider "aws" {
  region                      = "us-east-1"
  access_key                  = "test"
  secret_key                  = "test"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
}

override_data {
  target = data.aws_caller_identity.current
  values = { account_id = "123456789012" }
}

override_resource {
  target          = aws_sqs_queue.indexer
  override_during = plan
  values          = { arn = "arn:aws:sqs:us-east-1:123456789012:t-indexer" }
}

override_resource {
  target          = aws_cloudwatch_log_group.indexer
  override_during = plan
  values          = { arn = "arn:aws:logs:us-east-1:123456789012:log-group:/aws/lambda/t-indexer" }
}

variables {
  name_prefix        = "tt"
  bucket_name        = "acme-logs"
  create_bucket      = false
  compactor_enabled  = true
  create_glue_tables = true
  glue_cluster_names = ["c1"]
  compact_sources    = { app = "logs/app/%Y/%m/%d/%H/", web = "logs/web/%Y/%m/%d/%H/" }
}

run "settings_reach_the_function" {
  command = plan
  variables {
    compact_inputs      = "delete"
    indexer_timeout     = 120
    indexer_memory_size = 512
  }
  assert {
    condition = aws_lambda_function.indexer[0].environment[0].variables == tomap({
      DISTINCT_FIELDS   = "ecs_cluster,ecs_task_id,container_name,kubernetes.pod_name,level"
      TOKEN_FIELDS      = "msg,log,message"
      INDEX_PREFIX      = "_index/"
      QUARANTINE_PREFIX = "_quarantine/"
      COMPACT_PREFIX    = "compacted/"
      COMPACT_INPUTS    = "delete"
      COMPACT_BUCKET    = "acme-logs"
      COMPACT_SOURCES   = "app=logs/app/%Y/%m/%d/%H/,web=logs/web/%Y/%m/%d/%H/"
      COMPACT_DELAY     = "10m"
    })
    error_message = "environment: ${jsonencode(aws_lambda_function.indexer[0].environment[0].variables)}"
  }
  assert {
    condition     = aws_lambda_function.indexer[0].timeout == 900 && aws_lambda_function.indexer[0].memory_size == 1024
    error_message = "the shared function must get the compactor's timeout and memory"
  }
  assert {
    condition     = aws_sqs_queue.indexer[0].visibility_timeout_seconds == 5400
    error_message = "visibility timeout must follow the function's timeout"
  }
  assert {
    condition     = aws_cloudwatch_event_rule.compactor[0].schedule_expression == "cron(15 * * * ? *)"
    error_message = "schedule"
  }
  assert {
    condition     = aws_lambda_permission.compactor[0].principal == "events.amazonaws.com" && aws_lambda_permission.compactor[0].function_name == "tt-indexer"
    error_message = "permission"
  }
  assert {
    condition     = aws_glue_catalog_table.logs_parquet[0].parameters["storage.location.template"] == "s3://acme-logs/compacted/dt=$${dt}/hour=$${hour}/source=$${source}/"
    error_message = "location template: ${aws_glue_catalog_table.logs_parquet[0].parameters["storage.location.template"]}"
  }
  assert {
    condition     = aws_glue_catalog_table.logs_parquet[0].parameters["projection.source.values"] == "app,web"
    error_message = "source enum"
  }
  assert {
    condition     = length(aws_glue_catalog_table.logs_parquet[0].storage_descriptor[0].columns) == 23
    error_message = "columns"
  }
  assert {
    condition     = strcontains(aws_athena_named_query.by_label[0].query, "kubernetes.labels['app'] = 'checkout'") && strcontains(aws_athena_named_query.by_label[0].query, "source = 'app'")
    error_message = "by_label: ${aws_athena_named_query.by_label[0].query}"
  }
}

run "off_by_default" {
  command = plan
  variables {
    compactor_enabled = false
  }
  assert {
    condition     = length(aws_cloudwatch_event_rule.compactor) == 0 && length(aws_glue_catalog_table.logs_parquet) == 0 && length(aws_athena_named_query.errors_by_task) == 0
    error_message = "nothing of the compactor when it is off"
  }
  assert {
    condition     = !contains(keys(aws_lambda_function.indexer[0].environment[0].variables), "COMPACT_SOURCES") && aws_lambda_function.indexer[0].timeout == 120
    error_message = "no COMPACT_* and the indexer's own timeout when off"
  }
}

run "needs_sources" {
  command = plan
  variables {
    compact_sources = {}
  }
  expect_failures = [aws_cloudwatch_event_rule.compactor]
}

run "sources_under_logs_prefix" {
  command = plan
  variables {
    compact_sources = { app = "other/app/%Y/" }
  }
  expect_failures = [aws_cloudwatch_event_rule.compactor]
}

run "compact_prefix_not_under_logs" {
  command = plan
  variables {
    compact_prefix = "logs/compacted/"
  }
  expect_failures = [aws_cloudwatch_event_rule.compactor]
}

run "compacted_inputs_expire_by_tag" {
  command = plan
  variables {
    create_bucket                   = true
    compacted_input_expiration_days = 7
  }
  assert {
    condition     = one([for r in aws_s3_bucket_lifecycle_configuration.logs[0].rule : r if r.id == "compacted-inputs"]).expiration[0].days == 7
    error_message = "compacted inputs expire after compacted_input_expiration_days"
  }
  assert {
    condition     = one([for r in aws_s3_bucket_lifecycle_configuration.logs[0].rule : r if r.id == "compacted-inputs"]).filter[0].and[0].tags["logferry-compacted"] == "true"
    error_message = "compacted inputs are selected by their logferry-compacted=true tag"
  }
}

run "bad_inputs_mode" {
  command = plan
  variables {
    compact_inputs = "move"
  }
  expect_failures = [var.compact_inputs]
}

run "bad_source_name" {
  command = plan
  variables {
    compact_sources = { "a=b" = "logs/a/" }
  }
  expect_failures = [var.compact_sources]
}

run "declared_columns_reach_the_function_and_the_tables" {
  command = plan
  variables {
    # Written out of order: the function and the tables get them in name order.
    compact_columns = { request_id = "string", latency_ms = "double", cache_hit = "boolean", bytes = "bigint", datehour = "string" }
  }
  assert {
    condition     = aws_lambda_function.indexer[0].environment[0].variables["COMPACT_COLUMNS"] == "bytes:bigint,cache_hit:boolean,datehour:string,latency_ms:double,request_id:string"
    error_message = "COMPACT_COLUMNS: ${aws_lambda_function.indexer[0].environment[0].variables["COMPACT_COLUMNS"]}"
  }
  assert {
    # Between the fixed columns and kubernetes, rest, as in the file.
    condition = [for c in aws_glue_catalog_table.logs_parquet[0].storage_descriptor[0].columns : "${c.name}:${c.type}"] == concat(
      [for c in local.parquet_leading_columns : "${c[0]}:${c[1]}"],
      ["bytes:bigint", "cache_hit:boolean", "datehour:string", "latency_ms:double", "request_id:string"],
      [for c in local.parquet_trailing_columns : "${c[0]}:${c[1]}"],
    )
    error_message = "logs_parquet columns: ${jsonencode([for c in aws_glue_catalog_table.logs_parquet[0].storage_descriptor[0].columns : c.name])}"
  }
  assert {
    condition     = length(aws_glue_catalog_table.logs_parquet[0].storage_descriptor[0].columns) == 28 && local.parquet_trailing_columns[1][0] == "rest"
    error_message = "23 fixed columns and 5 declared"
  }
  assert {
    # As text in the NDJSON table, but not `datehour`: that is its partition.
    condition = toset([for c in aws_glue_catalog_table.logs[0].storage_descriptor[0].columns : "${c.name}:${c.type}" if contains(["bytes", "cache_hit", "datehour", "latency_ms", "request_id"], c.name)]) == toset(
      ["bytes:string", "cache_hit:string", "latency_ms:string", "request_id:string"]
    )
    error_message = "logs columns: ${jsonencode([for c in aws_glue_catalog_table.logs[0].storage_descriptor[0].columns : c.name])}"
  }
}

run "no_declared_columns_no_setting" {
  command = plan
  assert {
    condition     = !contains(keys(aws_lambda_function.indexer[0].environment[0].variables), "COMPACT_COLUMNS")
    error_message = "COMPACT_COLUMNS only when columns are declared"
  }
}

run "declared_column_of_the_layout" {
  command = plan
  variables {
    compact_columns = { request_id = "string", source = "string" }
  }
  expect_failures = [var.compact_columns]
}

run "declared_column_bad_name" {
  command = plan
  variables {
    compact_columns = { RequestId = "string" }
  }
  expect_failures = [var.compact_columns]
}

run "declared_column_bad_type" {
  command = plan
  variables {
    compact_columns = { latency_ms = "int" }
  }
  expect_failures = [var.compact_columns]
}

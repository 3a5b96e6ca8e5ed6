output "bucket_name" {
  description = "The log bucket."
  value       = local.bucket_id
}

output "bucket_arn" {
  description = "ARN of the log bucket."
  value       = local.bucket_arn
}

output "logs_prefix" {
  description = "Key prefix the routers should write under (start the s3 sink's key_prefix with it)."
  value       = var.logs_prefix
}

output "log_group_name" {
  description = "The routers' CloudWatch log group (empty when not created)."
  value       = var.create_log_group ? aws_cloudwatch_log_group.routers[0].name : ""
}

output "log_group_arn" {
  description = "ARN of that log group (empty when not created)."
  value       = var.create_log_group ? aws_cloudwatch_log_group.routers[0].arn : ""
}

output "firehose_delivery_stream_name" {
  description = "The Firehose delivery stream (empty when not created)."
  value       = var.create_firehose ? aws_kinesis_firehose_delivery_stream.logs[0].name : ""
}

output "indexer_function_name" {
  description = "The indexer Lambda (empty when not created)."
  value       = local.indexer ? aws_lambda_function.indexer[0].function_name : ""
}

output "indexer_queue_url" {
  description = "The S3 notification queue the indexer consumes (empty when not created)."
  value       = local.indexer ? aws_sqs_queue.indexer[0].id : ""
}

output "indexer_dlq_url" {
  description = "Dead-letter queue of notifications the indexer failed on (empty when not created)."
  value       = local.indexer ? aws_sqs_queue.indexer_dlq[0].id : ""
}

output "glue_database_name" {
  description = "Glue database holding the `logs` and `log_index` tables, and `logs_parquet` with the compactor (empty when not created)."
  value       = var.create_glue_tables ? aws_glue_catalog_database.logs[0].name : ""
}

output "compact_prefix" {
  description = "Where the compactor writes Parquet (empty when the compactor is off)."
  value       = local.compactor ? var.compact_prefix : ""
}

output "compactor_schedule_rule_arn" {
  description = "ARN of the compactor's EventBridge rule (empty when the compactor is off)."
  value       = local.compactor ? aws_cloudwatch_event_rule.compactor[0].arn : ""
}

output "athena_named_query_ids" {
  description = "IDs of the Athena named queries over logs_parquet, by name (empty when not created)."
  value       = { for q in concat(aws_athena_named_query.errors_by_task, aws_athena_named_query.by_label) : q.name => q.id }
}

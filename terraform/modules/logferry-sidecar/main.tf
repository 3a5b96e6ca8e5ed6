locals {
  # Every template variable is the module variable of the same name (deploy-tests checks this
  # and renders the template with each example's values).
  config = templatefile("${path.module}/templates/logferry.toml.tftpl", {
    data_dir                  = var.data_dir
    memory_limit              = var.memory_limit
    api_address               = var.api_address
    log_include               = var.log_include
    parser                    = var.parser
    time_key                  = var.time_key
    enrich_ec2                = var.enrich_ec2
    app_container_name        = var.app_container_name
    environment               = var.environment
    region                    = var.region
    s3_bucket                 = var.s3_bucket
    s3_key_prefix             = var.s3_key_prefix
    s3_compression            = var.s3_compression
    s3_max_object_size        = var.s3_max_object_size
    s3_flush_interval         = var.s3_flush_interval
    s3_kms_key_arn            = var.s3_kms_key_arn
    cloudwatch_log_group      = var.cloudwatch_log_group
    cloudwatch_log_stream     = var.cloudwatch_log_stream
    cloudwatch_flush_interval = var.cloudwatch_flush_interval
    firehose_delivery_stream  = var.firehose_delivery_stream
    kinesis_stream            = var.kinesis_stream
  })



  log_mount  = { sourceVolume = var.log_volume_name, containerPath = var.log_dir }
  data_mount = { sourceVolume = var.data_volume_name, containerPath = var.data_dir, readOnly = false }

  container_definition = merge(
    {
      name              = var.name
      image             = var.image
      essential         = var.essential
      cpu               = var.cpu
      memoryReservation = var.memory_reservation
      memory            = var.memory
      user              = var.user
      # The config is inline; the data dir is a volume, so the root file system stays read-only.
      readonlyRootFilesystem = true
      command                = ["run"]
      environment = [
        { name = "LOGFERRY_CONFIG", value = local.config },
        { name = "LOGFERRY_LOG", value = var.log_level },
      ]
      mountPoints = [
        merge(local.log_mount, { readOnly = true }),
        local.data_mount,
      ]
      # The image is distroless (no shell, no curl): the binary checks its own /healthz.
      healthCheck = {
        command     = ["CMD", "/usr/local/bin/logferry", "healthcheck", "--url", "http://${var.api_address}/healthz"]
        interval    = 10
        timeout     = 5
        retries     = 3
        startPeriod = 10
      }
      stopTimeout     = var.stop_timeout
      linuxParameters = { capabilities = { drop = ["ALL"] } }
      dockerLabels    = { "logferry.role" = "log-router" }
    },
    # Only with a router_log_group (a filtered for expression: a conditional between {} and
    # an object would not type-check).
    {
      for k, v in {
        logConfiguration = {
          logDriver = "awslogs"
          options = {
            awslogs-group         = var.router_log_group
            awslogs-region        = var.region
            awslogs-stream-prefix = var.name
          }
        }
      } : k => v if var.router_log_group != ""
    },
  )

  volumes = [
    merge(
      { name = var.log_volume_name },
      { for k, v in { host = { sourcePath = var.log_volume_host_path } } : k => v if var.log_volume_host_path != "" },
    ),
    { name = var.data_volume_name },
  ]
}

# The policy lives in logferry-iam, so an EKS (IRSA) role can use the very same one.
module "iam" {
  source = "../logferry-iam"

  region                   = var.region
  s3_bucket                = var.s3_bucket
  s3_key_prefix            = var.s3_key_prefix
  s3_kms_key_arn           = var.s3_kms_key_arn
  cloudwatch_log_group     = var.cloudwatch_log_group
  firehose_delivery_stream = var.firehose_delivery_stream
  kinesis_stream           = var.kinesis_stream
}

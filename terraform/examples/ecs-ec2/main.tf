# The EC2 launch type with instance-profile credentials: no task role; the router's policy is
# attached to the container instances' role and the AWS SDK in the router reads the instance
# profile's credentials from IMDSv2. Bridge-mode containers are one network hop away from
# IMDS: the instances need an IMDS hop limit of 2 (see the README).

module "destinations" {
  source = "../../modules/logferry-destinations"

  name_prefix              = var.name
  bucket_name              = var.bucket_name
  log_group_retention_days = var.log_retention_days
}

module "logferry" {
  source = "../../modules/logferry-sidecar"

  image                = var.router_image
  region               = var.region
  app_container_name   = "app"
  environment          = "demo"
  enrich_ec2           = true
  log_volume_host_path = var.log_host_path
  s3_bucket            = module.destinations.bucket_name
  s3_key_prefix        = "logs/{ecs_cluster}/%Y/%m/%d/%H/"
  cloudwatch_log_group = module.destinations.log_group_name
}

resource "aws_iam_role_policy" "instance_logferry" {
  name   = "${var.name}-logferry"
  role   = var.instance_role_name
  policy = module.logferry.iam_policy_json
}

resource "aws_ecs_task_definition" "app" {
  family                   = var.name
  requires_compatibilities = ["EC2"]
  network_mode             = "bridge"

  container_definitions = jsonencode([
    {
      name                   = "app"
      image                  = var.app_image
      essential              = true
      memory                 = 128
      readonlyRootFilesystem = true
      command                = ["sh", "-c", "i=0; while true; do i=$((i+1)); printf '{\"level\":\"info\",\"msg\":\"hello from the app\",\"n\":%d}\\n' $i >> /var/log/app/app.log; sleep 5; done"]
      mountPoints            = module.logferry.app_mount_points
      dependsOn              = module.logferry.app_depends_on
    },
    module.logferry.container_definition,
  ])

  dynamic "volume" {
    for_each = module.logferry.volumes
    content {
      name      = volume.value.name
      host_path = try(volume.value.host.sourcePath, null)
    }
  }
}

resource "aws_ecs_service" "app" {
  name            = var.name
  cluster         = var.cluster_name
  task_definition = aws_ecs_task_definition.app.arn
  desired_count   = 1
  launch_type     = "EC2"
}
